"""The export pipeline: a list of named stages, each a function from state to state, each
logged with its wall time and the process's peak memory so far.

Stages: load -> prune (when --prune is given) -> quantize (when a recipe is given) -> lower (one per target) -> verify (load each
artifact with its own runtime, compare logits with the in-memory model it was lowered from) ->
quality (PPL / KLD / same-top-token against the unquantized source on the packaged evaluation
text) -> report.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from edge.bench import peak_rss_mb, proc_kb
from edge.errors import EdgeError

from .loaders import Checkpoint, load_checkpoint

TARGETS = ("edge", "hf", "gguf", "xnnpack", "onnx", "onnx-qdq", "qnn", "mediatek")
# Targets lowered by a module of their own. Each module provides
#   check_request(cfg, recipe)       refuse an unsupported combination before any work
#                                    (recipe: the loaded Recipe, or None without quantization)
#   stage(st)                        write into st.workdir, set st.artifacts[target] and
#                                    st.report["artifacts"][target] (with "exact": bool)
#   artifact_logits(path, max_seq_len)  (1, n) ids -> (n, vocab) logits on the artifact's own
#                                    runtime, for verify and quality; None when the stage has
#                                    already checked and scored the artifact itself
# A stage that completes its part but cannot finish the artifact (a vendor compiler that is not
# installed) appends a one-line message to st.deferred_errors: the other artifacts and the
# report are still written, then the export fails with that message.
TARGET_MODULES = {"xnnpack": "export.lower_xnnpack", "onnx": "export.lower_onnx",
                  "onnx-qdq": "export.lower_onnx_qdq",
                  "qnn": "export.lower_qnn", "mediatek": "export.lower_mediatek"}
# Targets whose lowering stage scores the artifact itself (simulated vendor programs): their
# artifact_logits is None.
STAGE_SCORED = frozenset({"qnn", "mediatek"})
# Verification: logits on a fixed probe text within this absolute tolerance of the model the
# artifact was lowered from when the artifact holds it exactly (float weights in the source
# precision, or weight-only quantized values the reference dequantizes; measured on SmolLM2:
# 7e-5 for f32 and int8 g32 edge artifacts). Artifacts with quantized activations (rounded by
# their own runtime: see stage_lower_edge) are checked statistically: the mean per-position
# correlation of their logits with the reference's. Measured on the probe text: SmolLM2 with
# the mobile schemes (round to nearest) 0.992 (gguf), 0.996 (edge, xnnpack, onnx); random
# weights at the Llama 3.2 1B shape 0.999 (xnnpack). The same SmolLM2 reference with one
# structural fault: two layers swapped 0.981, one layer's down_proj scales doubled 0.958, a
# projection's rows or columns reversed 0.906 / 0.912. Top-1 agreement is reported, not gated:
# it was 0.82-0.94 for the sound artifacts (0.85 on the random 1B, whose top logits are close)
# and 0.53-0.76 for the faults.
VERIFY_LOGIT_ATOL_EXACT = 1e-3
VERIFY_MIN_LOGIT_CORR = 0.985
EDGE_DEFAULT_MAX_CONTEXT = 4096
# The quality stage scores every artifact against the source on the packaged evaluation text
# (written for the project, independent of the calibration text) in windows of this length.
QUALITY_CTX = 256
QUALITY_TEXT = Path(__file__).resolve().parents[1] / "quant" / "data" / "eval.txt"
PROBE_TEXT = ("The library opens at nine in the morning and closes at six. On Saturdays it "
              "closes early, at one, and it is closed on Sundays and public holidays.")


@dataclass
class ExportConfig:
    checkpoint: str
    out: Path
    recipe: str = "none"
    targets: tuple[str, ...] = ("edge",)
    dtype: str = "auto"  # unquantized weights: auto keeps the source precision
    force: bool = False
    allow_pickle: bool = False
    calib: Path | None = None
    max_context: int | None = None  # edge target (default: min(model, 4096))
    prune: str | None = None  # "layers=N,ffn=F,heads=N,vocab=FILE" (see export/prune.py)
    prune_method: str = "importance"
    heal_steps: int = 0
    heal_budget: float | None = None  # seconds
    keep_model: bool = False  # keep the quantized torch model on the returned state (its
    # memory stays in use through the quality stage)
    memory_check: bool = True  # refuse early when the estimated peak exceeds available memory


@dataclass
class ExportState:
    cfg: ExportConfig
    workdir: Path | None = None
    checkpoint: Checkpoint | None = None
    model: object = None  # the quantized LlamaModel (fake-quant reference), when a recipe ran
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    deferred_errors: list[str] = field(default_factory=list)


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: /proc/self/clear_refs, value 5), so that each stage reports its
    own; False where the peak cannot be reset (then peaks are since the start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """The process's resident memory now (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def return_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them mapped
    otherwise, and the next stage's peak would stand on them)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# Peak resident memory of an export as a multiple of the source's float weights, plus a fixed
# part (interpreter, torch, executorch / onnxruntime, the quality stage's scoring). Measured with
# the mobile schemes at the Llama 3.2 1B shape (2.47 GB of bf16 weights): load 1.12x, quantize
# 1.79x, lowering to xnnpack 1.91x (onnx 1.12x), verify / quality at most 1.62x; at the 3B shape
# (6.43 GB) to onnx: quantize 1.69x. Healing after pruning also holds a trainable fp32 copy, its
# gradients and Adam's two moments.
PEAK_PER_WEIGHT_BYTE = 2.1
PEAK_FIXED_BYTES = 0.7e9
HEAL_BYTES_PER_PARAM = 16


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    kb = proc_kb("/proc/meminfo", "MemAvailable")
    return None if kb is None else kb * 1024


def source_weight_bytes(checkpoint: str) -> int | None:
    """Bytes of float weights a checkpoint will load as, before loading it: a preset's size in
    bf16, else the weight files on disk (a quantized GGUF loads larger: checked again after
    loading). None when unknown."""
    from edge.config import PRESETS

    from .loaders import resolve_model

    s = str(checkpoint)
    if s.startswith("preset:"):
        cfg = PRESETS.get(s.split(":", 1)[1])
        return None if cfg is None else 2 * cfg.num_parameters()
    try:
        p = resolve_model(s)
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in
                   (".safetensors", ".pth", ".bin", ".gguf", ".pt"))
    except OSError:
        return None


def estimate_peak_bytes(cfg: ExportConfig, weight_bytes: int, params: int) -> int:
    peak = PEAK_PER_WEIGHT_BYTE * weight_bytes + PEAK_FIXED_BYTES
    if cfg.dtype == "fp32":  # unquantized weights upcast: the artifact's model is twice as big
        peak += weight_bytes
    if cfg.prune and cfg.heal_steps:
        peak += HEAL_BYTES_PER_PARAM * params
    return int(peak)


def check_memory(cfg: ExportConfig, weight_bytes: int | None, params: int | None,
                 held_bytes: int = 0) -> int | None:
    """Refuse an export whose estimated peak exceeds the memory this machine has available (plus
    what the process already holds of it), before the expensive stages; the estimate in bytes."""
    if weight_bytes is None:
        return None
    if params is None:
        params = weight_bytes // 2
    need = estimate_peak_bytes(cfg, weight_bytes, params)
    avail = available_memory_bytes()
    if not cfg.memory_check or avail is None or need <= avail + held_bytes:
        return need
    raise EdgeError(
        f"exporting {cfg.checkpoint} needs about {need / 1e9:.1f} GB of memory at its peak "
        f"(estimate: {PEAK_PER_WEIGHT_BYTE} x its {weight_bytes / 1e9:.2f} GB of weights + "
        f"{PEAK_FIXED_BYTES / 1e9:.1f} GB), and {(avail + held_bytes) / 1e9:.1f} GB is available; "
        "free memory or export on a machine with more, or pass --skip-memory-check to try "
        "anyway")


# Heap blocks at least this large are mapped on their own and unmapped when freed. glibc
# otherwise raises its threshold as large blocks are freed (up to 32 MiB) and keeps freed ones
# for reuse: at the 1B shape, loading alone then peaked 0.8 GB above its resident weights.
MMAP_THRESHOLD_BYTES = 4 << 20


def bound_heap_retention() -> None:
    """Fix glibc's mmap threshold (no-op elsewhere), so that freed temporaries of a stage go
    back to the system instead of raising the next stage's peak."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _dtype_for(ck: Checkpoint, name: str) -> torch.dtype:
    if name == "auto":
        return ck.dtype if ck.dtype in (torch.bfloat16, torch.float16) else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def stage_load(st: ExportState) -> ExportState:
    st.checkpoint = load_checkpoint(st.cfg.checkpoint, allow_pickle=st.cfg.allow_pickle)
    ck = st.checkpoint
    weights = sum(t.numel() * t.element_size() for t in ck.tensors.values())
    params = ck.config.num_parameters()
    need = check_memory(st.cfg, weights, params, held_bytes=int(rss_mb() * 2**20))
    st.report["model"] = {"source": str(ck.path), "format": ck.format, "parameters": params,
                          "config": ck.config.to_hf_dict(), "notes": ck.notes}
    if need is not None:
        st.report["memory_estimate_mb"] = round(need / 2**20, 1)
    return st


def stage_prune(st: ExportState) -> ExportState:
    from .prune import parse_prune, prune_checkpoint

    spec = parse_prune(st.cfg.prune, st.cfg.prune_method)
    st.checkpoint, rep = prune_checkpoint(st.checkpoint, spec, st.cfg.calib,
                                          heal_steps=st.cfg.heal_steps,
                                          heal_budget=st.cfg.heal_budget)
    st.report["pruning"] = rep.to_json()
    st.report["model"]["pruned_parameters"] = rep.params_after
    return st


def stage_quantize(st: ExportState) -> ExportState:
    from tqdm import tqdm

    from .quantize import quantized_model

    ck = st.checkpoint
    bar = tqdm(total=ck.config.num_layers, desc=f"quantize ({st.cfg.recipe})", unit="layer",
               leave=False, disable=None)

    def progress(i, n):
        bar.total = n
        bar.n = i
        bar.refresh()

    try:
        model, rep = quantized_model(ck, st.cfg.recipe, st.cfg.calib, progress=progress)
    finally:
        bar.close()
    st.model = model
    st.report["quantization"] = {"recipe": rep.recipe, "seconds": round(rep.seconds, 2),
                                 **rep.totals(), "notes": rep.notes}
    release_source(st)
    return st


# Targets lowered from the quantized model alone: once it exists they need no float weights.
FROM_QUANTIZED = frozenset({"edge", "gguf", "xnnpack", "onnx"})


def release_source(st: ExportState) -> None:
    """Drop the checkpoint's float tensors (shapes and dtypes stay, on the meta device) when
    every target lowers from the quantized model and the checkpoint can be read again (it was
    not pruned in memory): lowering then holds the quantized model, not both. The quality stage
    reads them back (source_tensors)."""
    if st.model is None or st.cfg.prune or not set(st.cfg.targets) <= FROM_QUANTIZED:
        return
    ck = st.checkpoint
    ck.tensors = {k: v.to("meta") for k, v in ck.tensors.items()}


def source_tensors(st: ExportState) -> dict:
    """The checkpoint's float tensors, read again if release_source dropped them."""
    if not st.checkpoint.tensors["model.embed_tokens.weight"].is_meta:
        return st.checkpoint.tensors
    return load_checkpoint(st.cfg.checkpoint, allow_pickle=st.cfg.allow_pickle).tensors


def _float_model(ck: Checkpoint, max_seq_len: int):
    from .model import LlamaModel

    return LlamaModel.from_state_dict(ck.config, ck.tensors, torch.float32, max_seq_len=max_seq_len)


def resolve_max_context(requested: int | None, cfg, default: int) -> int:
    """--max-context, or min(model positions, the target's default); checked against the model."""
    n = requested or min(cfg.max_position_embeddings, default)
    if not 0 < n <= cfg.max_position_embeddings:
        raise EdgeError(f"--max-context {n} is outside 1..{cfg.max_position_embeddings} (the "
                        "model's positions)")
    return n


def stage_lower_edge(st: ExportState) -> ExportState:
    from edge.artifact import write_artifact_into
    from edge.chat import detect_chat_format

    from .lower_edge import edge_weights

    ck = st.checkpoint
    if ck.tokenizer is None:
        raise EdgeError(f"{ck.path}: the edge artifact needs the model's tokenizer and this "
                        "checkpoint has none; add tokenizer.json to the checkpoint directory")
    dest = st.workdir / "edge"
    dest.mkdir()
    model = st.model if st.model is not None else _float_model(ck, QUALITY_CTX)
    weights, norms = edge_weights(model, _dtype_for(ck, st.cfg.dtype))
    max_ctx = resolve_max_context(st.cfg.max_context, ck.config, EDGE_DEFAULT_MAX_CONTEXT)
    write_artifact_into(dest, ck.config, weights, norms, ck.tokenizer, detect_chat_format(ck.tokenizer),
                        max_ctx, recipe=st.cfg.recipe)
    size = sum(p.stat().st_size for p in dest.iterdir())
    kinds = sorted({w.packed.kind for w in weights.values() if w.packed is not None})
    st.artifacts["edge"] = dest
    # Quantized activations make the model itself sensitive to rounding: a value next to a
    # rounding boundary goes either way with the order of float sums, so the kernels match the
    # reference statistically (top-1 agreement, KLD in the quality stage), not to a tolerance.
    st.report.setdefault("artifacts", {})["edge"] = {
        "path": "edge", "dtype": "+".join(kinds), "bytes": size, "max_context": max_ctx,
        "exact": not any(w.act for w in weights.values())}
    return st


def stage_lower_hf(st: ExportState) -> ExportState:
    from .writers import write_hf_into

    dest = st.workdir / "hf"
    dest.mkdir()
    dtype = _dtype_for(st.checkpoint, st.cfg.dtype)
    write_hf_into(st.checkpoint, dest, dtype)
    st.artifacts["hf"] = dest
    size = sum(p.stat().st_size for p in dest.iterdir())
    st.report.setdefault("artifacts", {})["hf"] = {
        "path": "hf", "dtype": str(dtype).removeprefix("torch."), "bytes": size,
        "exact": dtype == torch.float32 or dtype == st.checkpoint.dtype}
    return st


def stage_lower_gguf(st: ExportState) -> ExportState:
    from edge.llamacpp import available

    from .lower_gguf import write_gguf

    ck = st.checkpoint
    dest = st.workdir / "model.gguf"
    model = st.model if st.model is not None else _float_model(ck, QUALITY_CTX)
    template = ck.tokenizer.chat_template or ck.chat_template if ck.tokenizer else None
    summary = write_gguf(model, ck.tokenizer, dest, _dtype_for(ck, st.cfg.dtype), template,
                         recipe=st.cfg.recipe)
    st.artifacts["gguf"] = dest
    types = summary["types"]
    quantized = bool({"Q8_0", "Q4_0"} & set(types))
    # llama.cpp multiplies every Q8_0 / Q4_0 weight with activations it rounds to Q8_0 blocks
    # itself (and F16 / BF16 weights with activations rounded to that type), so only an all-F32
    # file computes what the fp32 reference computes.
    info = {"path": dest.name, "dtype": "+".join(sorted(types)), "bytes": dest.stat().st_size,
            "tensor_types": types, "exact": set(types) <= {"F32"},
            "runtime": "llama.cpp" if available() else
            "torch (llama-cpp-python is not installed: pip install 'llama-edge[bench]')"}
    if quantized:
        info["activations"] = ("llama.cpp's own: each Q8_0 / Q4_0 matmul rounds its input to "
                               "Q8_0 blocks (32 values, fp16 scale)")
    if summary["act_dropped"]:
        info["activations_replaced"] = len(summary["act_dropped"])
    st.report.setdefault("artifacts", {})["gguf"] = info
    return st


def _target_module(target: str):
    import importlib

    return importlib.import_module(TARGET_MODULES[target])


def artifact_logits(target: str, path: Path, max_seq_len: int):
    """A function (1, n) ids -> (n, vocab) logits running an artifact on its own runtime (None
    when the target's stage checked and scored the artifact itself)."""
    if target in TARGET_MODULES:
        return _target_module(target).artifact_logits(path, max_seq_len)
    if target == "gguf":
        from edge.llamacpp import LlamaCppEngine, available

        if available():  # otherwise read back by our loader and run on torch (below)
            eng = LlamaCppEngine(path, max_context=max_seq_len, threads=torch.get_num_threads())
            sess = eng.session(exact=True)
            return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()).copy())
    if target == "edge":
        from edge.runtime import EdgeEngine

        sess = EdgeEngine(path, max_context=max_seq_len).session()
        return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))
    from .model import LlamaModel

    art = load_checkpoint(path)
    m = LlamaModel.from_state_dict(art.config, art.tensors, max_seq_len=max_seq_len)
    return lambda w: m(w)[0]


@torch.inference_mode()
def stage_verify(st: ExportState) -> ExportState:
    """Load every artifact with its runtime and compare it with the model it was lowered from
    (the quantized reference when a recipe ran)."""
    from .model import reference_model

    ck = st.checkpoint
    ids = ck.tokenizer.encode(PROBE_TEXT) if ck.tokenizer is not None else list(range(1, 33))
    x = torch.tensor([ids])
    ref = st.model if st.model is not None else reference_model(ck.config, ck.tensors,
                                                                len(ids) + 1)
    ref_logits = ref(x)[0]
    for name, path in st.artifacts.items():
        run = artifact_logits(name, path, len(ids) + 1)
        if run is None:
            continue
        got = run(x)
        agree = float((got.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        diff = float((got - ref_logits).abs().max())
        corr = logit_correlation(got, ref_logits)
        info = st.report["artifacts"][name]
        info.update(verify_tokens=len(ids), top1_agreement=round(agree, 4),
                    max_abs_logit_diff=diff, logit_correlation=round(corr, 6))
        if info["exact"] and diff > VERIFY_LOGIT_ATOL_EXACT:
            raise EdgeError(f"verification of the {name} artifact failed: logits differ by "
                            f"{diff:.3g} (> {VERIFY_LOGIT_ATOL_EXACT}) from the model it was "
                            "lowered from")
        if corr < VERIFY_MIN_LOGIT_CORR:
            raise EdgeError(f"verification of the {name} artifact failed: its logits correlate "
                            f"{corr:.3f} (< {VERIFY_MIN_LOGIT_CORR}) with those of the model it "
                            f"was lowered from (top-1 agreement {agree:.0%})")
    if not st.cfg.keep_model:
        st.model = None  # its last use: the quality stage compares with the unquantized source
    return st


@torch.inference_mode()
def stage_quality(st: ExportState) -> ExportState:
    """PPL, mean KLD and same-top-token rate of every artifact against the source."""
    from quant.eval import SpilledLogits, compare

    from .evaluate import read_text
    from .model import reference_model

    ck = st.checkpoint
    if ck.tokenizer is None:
        st.report["quality"] = "skipped: the checkpoint has no tokenizer"
        return st
    ids = ck.tokenizer.encode(read_text(QUALITY_TEXT))
    if set(st.artifacts) <= STAGE_SCORED:
        return st
    # The reference's logits go to a temporary file and the reference is freed before any
    # artifact's runtime loads: the source's float weights (2.5 GB for a 1B model) and the
    # artifact (plus its runtime's prompt temporaries) are never resident together.
    ref = reference_model(ck.config, source_tensors(st), max_seq_len=QUALITY_CTX)
    with SpilledLogits(lambda w: ref(w)[0], ids, QUALITY_CTX, dir=st.workdir) as ref_logits:
        del ref
        return_free_memory()
        for name, path in st.artifacts.items():
            run = artifact_logits(name, path, QUALITY_CTX)
            if run is None:
                continue
            r = compare(run, ref_logits, ids, QUALITY_CTX)
            del run
            return_free_memory()
            st.report["artifacts"][name]["quality"] = {**r.to_json(), "text": QUALITY_TEXT.name}
    return st


def logit_correlation(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over positions of the Pearson correlation of two (n, vocab) logit matrices."""
    g, r = got.double(), ref.double()
    g, r = g - g.mean(-1, keepdim=True), r - r.mean(-1, keepdim=True)
    c = (g * r).sum(-1) / (g.norm(dim=-1) * r.norm(dim=-1)).clamp(min=1e-30)
    return float(c.mean())


def stage_report(st: ExportState) -> ExportState:
    (st.workdir / "export_report.json").write_text(json.dumps(st.report, indent=2) + "\n")
    return st


def build_stages(cfg: ExportConfig) -> list[tuple[str, Callable[[ExportState], ExportState]]]:
    from quant.recipes import load_recipe

    from .quantize import parse_auto

    if not cfg.targets:
        raise EdgeError(f"no target given; available: {', '.join(TARGETS)}")
    for t in cfg.targets:
        if t not in TARGETS:
            raise EdgeError(f"unknown target {t!r}; available: {', '.join(TARGETS)}")
    quantized = cfg.recipe != "none"
    recipe = None
    if quantized:
        if not cfg.recipe.startswith("auto"):
            recipe = load_recipe(cfg.recipe)  # a bad name or file fails before any work
            if "gguf" in cfg.targets:
                from .lower_gguf import check_recipe

                check_recipe(recipe)
        elif parse_auto(cfg.recipe, 1) is None:
            raise EdgeError(f"unknown recipe {cfg.recipe!r}")
        if "hf" in cfg.targets:
            raise EdgeError("target hf holds unquantized weights; with --recipe use --target "
                            "edge or gguf")
    for t in cfg.targets:
        if t in TARGET_MODULES:
            _target_module(t).check_request(cfg, recipe)
    stages = [("load", stage_load)]
    if cfg.prune:
        from .prune import parse_prune

        parse_prune(cfg.prune, cfg.prune_method)  # a bad spec fails before any work
        stages.append(("prune", stage_prune))
    if quantized:
        stages.append(("quantize", stage_quantize))
    if "edge" in cfg.targets:
        stages.append(("lower:edge", stage_lower_edge))
    if "hf" in cfg.targets:
        stages.append(("lower:hf", stage_lower_hf))
    if "gguf" in cfg.targets:
        stages.append(("lower:gguf", stage_lower_gguf))
    for t in cfg.targets:
        if t in TARGET_MODULES:
            stages.append((f"lower:{t}", _target_module(t).stage))
    stages += [("verify", stage_verify), ("quality", stage_quality), ("report", stage_report)]
    return stages


def run_export(cfg: ExportConfig, log: Callable[[str], None] = print) -> ExportState:
    from .writers import atomic_dir

    stages = build_stages(cfg)  # validate the request before any work
    check_memory(cfg, source_weight_bytes(cfg.checkpoint), None)  # and again once loaded
    st = ExportState(cfg)
    inputs = (cfg.checkpoint,) if Path(cfg.checkpoint).exists() else ()
    with atomic_dir(cfg.out, cfg.force, inputs=inputs) as tmp:
        st.workdir = tmp
        timings = st.report.setdefault("stages", [])
        t_all = time.perf_counter()
        overall = peak_rss_mb()
        for name, fn in stages:
            reset_peak_rss()
            t0 = time.perf_counter()
            st = fn(st)
            return_free_memory()
            dt = time.perf_counter() - t0
            peak, now = peak_rss_mb(), rss_mb()
            overall = max(overall, peak)
            timings.append({"stage": name, "seconds": round(dt, 3),
                            "peak_rss_mb": round(peak, 1), "rss_after_mb": round(now, 1)})
            log(f"[{name:<10}] {dt:7.2f} s   peak RSS {peak:8.1f} MB   (after: {now:.0f} MB)")
        st.report["total_seconds"] = round(time.perf_counter() - t_all, 3)
        st.report["peak_rss_mb"] = round(overall, 1)
        if st.deferred_errors:
            st.report["errors"] = list(st.deferred_errors)
        stage_report(st)
    st.artifacts = {k: Path(cfg.out) / v.name for k, v in st.artifacts.items()}
    st.workdir = Path(cfg.out)
    if st.deferred_errors:
        raise EdgeError(st.deferred_errors[0])
    return st
