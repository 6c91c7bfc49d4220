"""Shared machinery of the vendor NPU targets (qnn: Qualcomm HTP, mediatek: NeuroPilot APU).

Both vendor compilers take a static graph with integer activations, so everything up to the
compiler is the same and lives here; export/targets/qnn.py and export/targets/mediatek.py add the
vendor's own quantizer, the SDK check and the compile call.

The program is the model's static chunk form (export/model/static.py: StaticProgram, run by
ChunkRunner) with T = CHUNK tokens per call and C = context positions (C - T past slots), as
the vendor LLM flows run it.

Quantization is the vendor's: torch.export -> prepare_pt2e(vendor quantizer) -> calibration on
the calibration text -> convert_pt2e. The converted program still runs on the CPU, with every
quantize / dequantize the vendor program performs in place, so its logits are the vendor
program's simulated output; they are scored against the unquantized model on the packaged
evaluation text (mean KLD, top-1 agreement, PPL) before any compile. The program is saved with
torch.export.save, reloaded and checked to give the same logits.

Recipes only choose weight bits per linear (int4 / int8; a rule without a scheme keeps 16-bit
weights); activations are always 16-bit integers, the precision both NPUs run LLMs with. The
embedding is a gather whose table the vendor quantizer treats as an activation. With a recipe
the pipeline's own quantize stage still runs (for the other targets); the vendor program starts
from the unquantized weights.

Limits: one program, the prompt-chunk shape (a device runner also decodes with it, one token in
a chunk of T); the KV-cache inputs and outputs carry their own 16-bit ranges (the runner
requantizes between them); the compile call is ExecuTorch's and runs only with the SDK.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edge.errors import EdgeError

from ..model.static import ChunkRunner, StaticProgram, example_inputs, torch_chunk_call

CHUNK = 128  # tokens per call: the vendor flows' prompt-chunk length
DEFAULT_CONTEXT = 512  # positions of the static cache (past slots + one chunk)
# Additive mask value for positions a query must not see: exp(-128) ~ 3e-56 is zero after
# softmax, and a 16-bit activation over a range this wide still resolves ~0.003.
MASK_VALUE = -128.0
CALIB_WINDOWS = 8  # calibration windows of `context` tokens
DEFAULT_BLOCK = 32  # weight block along the input for block-wise 4-bit (as our g32 recipes)
# The saved program reloaded must reproduce the in-memory program's logits (same graph, same
# kernels: measured 0.0 on the tiny model and SmolLM2).
RELOAD_ATOL = 1e-5


# ------------------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class WeightSpec:
    bits: int  # 4, 8 or 16
    block: int | None = None  # None: one scale per output channel

    @property
    def name(self) -> str:
        return f"int{self.bits}_{'pc' if self.block is None else f'b{self.block}'}"


def weight_plan(target: str, recipe, block_weights: bool) -> tuple[Callable[[str], WeightSpec],
                                                                     list[str]]:
    """Module name -> weight precision for the vendor quantizer, and notes on what the vendor
    path does differently from the recipe. recipe None: the vendor default (4-bit transformer
    linears, in blocks of DEFAULT_BLOCK where the quantizer has blocks, 8-bit per-channel output
    layer, the sensitive layer the vendor flows keep at 8 bits)."""
    notes = ["activations: 16-bit integers (static ranges from calibration)",
             "embedding: a gather whose table the vendor quantizer holds as a 16-bit activation"]
    if recipe is None:
        layer = WeightSpec(4, DEFAULT_BLOCK if block_weights else None)
        head = WeightSpec(8)
        return (lambda name: head if name == "lm_head" else layer), notes
    from quant.schemes import IntWeight

    def spec(name: str) -> WeightSpec:
        c = recipe.config_for(name)
        if c is None:
            return WeightSpec(16)
        w = c.weight
        assert isinstance(w, IntWeight) and w.bits in (4, 8)  # check_recipe ran before
        return WeightSpec(w.bits, w.group_size if block_weights else None)

    if any(r.config is not None and r.config.algorithm != "rtn" for r in recipe.rules):
        notes.append("weights: the vendor quantizer's min / max rounding (the recipe's "
                     "algorithm is not applied)")
    if not block_weights and any(r.config is not None and r.config.weight.group_size
                                 for r in recipe.rules):
        notes.append(f"weights: one scale per output channel ({target}'s quantizer has no "
                     "groups; the recipe's group sizes are not applied)")
    if any(r.config is not None and r.config.act is not None for r in recipe.rules):
        notes.append("the recipe's dynamic 8-bit activations are replaced by static 16-bit ones")
    if recipe.kv_cache is not None:
        notes.append("KV cache: 16-bit activations (the recipe's int8 cache is not applied)")
    return spec, notes


def check_recipe(target: str, cfg, choice) -> None:
    """Refuse, before any work, what the vendor quantizers cannot express."""
    from quant.schemes import IntWeight

    if choice.is_auto:
        raise EdgeError(f"--target {target} quantizes with the vendor's quantizer and takes "
                        "--recipe none (its default: 16-bit activations x 4-bit weights, 8-bit "
                        f"output layer) or a fixed int4 / int8 recipe, not {choice.text}")
    recipe = choice.recipe
    if cfg.max_context is not None and cfg.max_context <= CHUNK:
        raise EdgeError(f"--target {target}: --max-context {cfg.max_context} leaves no past "
                        f"positions; the static program runs chunks of {CHUNK} tokens and needs "
                        "a larger context")
    if recipe is None:
        return
    for r in recipe.rules:
        w = None if r.config is None else r.config.weight
        if w is None:
            continue
        if not isinstance(w, IntWeight):
            raise EdgeError(f"--target {target}: recipe {recipe.name!r} rule {r.pattern!r} "
                            f"uses {w.name}; the vendor quantizer has integer weights only "
                            "(int4 / int8)")
        if w.bits not in (4, 8):
            raise EdgeError(f"--target {target}: recipe {recipe.name!r} rule {r.pattern!r} "
                            f"uses {w.name}; the vendor quantizers take 4- or 8-bit weights only "
                            "(5- and 6-bit weights run on --target edge)")
        if w.group_size is not None and (w.group_size < 16 or w.group_size & (w.group_size - 1)):
            raise EdgeError(f"--target {target}: recipe {recipe.name!r} rule {r.pattern!r} "
                            f"has groups of {w.group_size}; vendor weight blocks are powers of "
                            "two from 16")


def check_blocks(model, spec: Callable[[str], WeightSpec]) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            b = spec(name).block
            if b is not None and mod.in_features % b:
                raise EdgeError(f"{name}: {mod.in_features} inputs are not a multiple of the "
                                f"weight block {b}")


def linear_module_name(node) -> str | None:
    """The qualified name of the nn.Linear a graph node was traced from (None otherwise)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, kind = list(stack.values())[-1]
    kind = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
    if not kind.endswith("Linear"):
        return None
    return path.removeprefix("L['self'].").replace("L__self___", "")


def linear_nodes(graph, target: str):
    """(node, module name) of every aten.linear node of a traced graph."""
    for node in graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.linear.default:
            continue
        name = linear_module_name(node)
        if name is None:
            raise EdgeError(f"{target}: linear node {node.name} has no module name")
        yield node, name


# ------------------------------------------------------------------------------ SDK status
@dataclass
class SdkStatus:
    """Whether a vendor compiler can run here, and if not, the one-line reason."""

    name: str  # "Qualcomm AI Engine Direct SDK (QNN)"
    version: str  # the version the installed executorch expects
    variable: str  # the environment variable that points to it
    present: bool
    problem: str | None = None  # why it cannot run (None when present)
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


# ------------------------------------------------------------------------------ the stage
@dataclass(frozen=True)
class Vendor:
    """One vendor target: its quantizer, SDK check and compile call."""

    target: str  # "qnn"
    block_weights: bool  # the quantizer has block-wise weights
    fused_norm: bool  # RMSNorm as one aten.rms_norm (see export/model/static.StaticProgram)
    quantizer: Callable  # (spec: module name -> WeightSpec) -> a pt2e Quantizer
    sdk: Callable[[], SdkStatus]
    compile: Callable  # (exported program, example inputs, dest dir, sdk) -> .pte path
    # Environment while the quantizer is built and prepared when the SDK is not usable (the
    # vendor code would otherwise look for the SDK, or download it)
    no_sdk_env: dict = field(default_factory=dict)


def static_context(cfg, model_cfg) -> int:
    c = cfg.max_context or min(DEFAULT_CONTEXT, model_cfg.max_position_embeddings)
    if not CHUNK < c <= model_cfg.max_position_embeddings:
        raise EdgeError(f"--max-context {c}: the static program needs more than one chunk "
                        f"({CHUNK} tokens) and at most the model's "
                        f"{model_cfg.max_position_embeddings} positions")
    return c


def _calibration_windows(ck, cfg, context: int) -> torch.Tensor:
    from ..quantize import calibration_ids

    return calibration_ids(ck.tokenizer, cfg.calib, CALIB_WINDOWS, context)


class _Env:
    """Set environment variables for a block, restoring the previous values after."""

    def __init__(self, values: dict):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc):
        for k, old in self.saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def quantize_static(vendor: Vendor, static: StaticProgram, spec, calib: torch.Tensor,
                    env: dict | None = None) -> tuple[torch.fx.GraphModule, tuple, dict]:
    """torch.export -> prepare_pt2e(vendor quantizer) -> calibrate -> convert_pt2e, with `env`
    set while the quantizer is built and prepared."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    cfg, t, c = static.config, static.chunk, static.context
    inputs = example_inputs(cfg, t, c)
    times = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        gm = torch.export.export(static, inputs, strict=False).module()
    times["export_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    with _Env(env or {}):
        prepared = prepare_pt2e(gm, vendor.quantizer(spec))
    times["prepare_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    run = chunk_runner(prepared, cfg, t, c)
    for w in calib:
        run.logits_all(w.tolist())
    times["calibrate_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    converted = convert_pt2e(prepared)
    times["convert_s"] = round(time.perf_counter() - t0, 2)
    return converted, inputs, times


def chunk_runner(program, cfg, chunk: int, context: int) -> ChunkRunner:
    """The static program (torch module or graph) driven by the one chunk runner: C - T past
    slots, the vendor mask value."""
    return ChunkRunner(torch_chunk_call(program, cfg, context), cfg, chunk, context - chunk,
                       MASK_VALUE)


def load_program(path) -> torch.fx.GraphModule:
    """A saved quantized program, callable (the quantize / dequantize operators it uses are
    registered by torchao, imported first)."""
    import torchao.quantization.pt2e  # noqa: F401  quantized_decomposed operators
    import torchao.quantization.quant_primitives  # noqa: F401  torchao.dequantize_affine

    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"{p}: quantized program not found")
    try:
        return torch.export.load(p).module()
    except Exception as e:  # torch reports a corrupt or foreign archive in many ways
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeError(f"{p}: not a loadable quantized program ({first})") from None


def drop_unused_constants(gm: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the graph no longer reads (convert_pt2e leaves the float
    weights beside their quantized replacements; saved, they would triple the file)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if name in used:
            continue
        path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(path) if path else gm
        if hasattr(owner, attr):
            delattr(owner, attr)


def fold_weight_dequantize(gm: torch.fx.GraphModule) -> None:
    """Compute once the dequantize operators whose inputs are all constants (the quantized
    weights) and read their float results instead: the same arithmetic, done once rather than on
    every call, for simulation only (the saved program keeps its integer weights)."""
    import operator

    ops = {torch.ops.quantized_decomposed.dequantize_per_channel.default,
           torch.ops.quantized_decomposed.dequantize_per_tensor.default,
           torch.ops.torchao.dequantize_affine.default}
    def value(a):
        return operator.attrgetter(a.target)(gm) if isinstance(a, torch.fx.Node) else a

    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        args = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if not args or any(a.op != "get_attr" for a in args):
            continue
        with torch.no_grad():
            out = node.target(*[value(a) for a in node.args],
                              **{k: value(v) for k, v in node.kwargs.items()})
        name = f"_dequantized_{folded}"
        gm.register_buffer(name, out)
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    drop_unused_constants(gm)
    gm.recompile()


def _score(run: Callable, ck, context: int) -> dict:
    """The simulated program against the unquantized model on the packaged evaluation text."""
    from quant.eval import compare

    from ..evaluate import QUALITY_CTX, QUALITY_TEXT, read_text
    from ..model import reference_model

    if ck.tokenizer is None:
        return {"skipped": "the checkpoint has no tokenizer"}
    ctx = min(QUALITY_CTX, context)
    ids = ck.tokenizer.encode(read_text(QUALITY_TEXT))
    ref = reference_model(ck.config, ck.tensors, max_seq_len=ctx)
    with torch.inference_mode():
        r = compare(run, lambda w: ref(w)[0], ids, ctx)
    return {**r.to_json(), "text": QUALITY_TEXT.name, "simulated": True}


def run_stage(st, vendor: Vendor):
    """The lower stage of a vendor target: quantize, save, reload, score, then compile with the
    SDK or defer a one-line error naming what is missing."""
    from ..model import LlamaModel

    ck, cfg, target = st.checkpoint, st.cfg, vendor.target
    recipe = st.recipe.recipe
    spec, notes = weight_plan(target, recipe, vendor.block_weights)
    context = static_context(cfg, ck.config)
    dest = st.workdir / target
    dest.mkdir()
    float_model = LlamaModel.from_state_dict(ck.config, ck.tensors, torch.float32,
                                             max_seq_len=context)
    check_blocks(float_model, spec)
    static = StaticProgram(float_model, CHUNK, context, vendor.fused_norm).eval()
    calib = _calibration_windows(ck, cfg, context)
    probe = _probe_ids(ck, context)
    with torch.inference_mode():
        probe_ref = float_model(probe)[0]  # (n, vocab) before the quantizer sees the weights
    sdk = vendor.sdk()
    converted, inputs, times = quantize_static(vendor, static, spec, calib,
                                               env=None if sdk.present else vendor.no_sdk_env)

    # Save the converted program, reload it, and check it reproduces the in-memory logits.
    t0 = time.perf_counter()
    path = dest / "model_quantized.pt2"
    drop_unused_constants(converted)
    ep = torch.export.export(converted, inputs, strict=False)
    torch.export.save(ep, path)
    reloaded = load_program(path)
    times["save_s"] = round(time.perf_counter() - t0, 2)
    in_memory = chunk_runner(converted, ck.config, CHUNK, context)
    runner = chunk_runner(reloaded, ck.config, CHUNK, context)

    def run(w):
        return torch.from_numpy(runner.logits_all(w[0].tolist()))

    got = run(probe)
    diff = float((got - torch.from_numpy(in_memory.logits_all(probe[0].tolist()))).abs().max())
    if not diff <= RELOAD_ATOL:
        raise EdgeError(f"{target}: the saved program {path.name} gives logits {diff:.3g} away "
                        "from the program it was saved from")
    del in_memory, converted
    fold_weight_dequantize(reloaded)  # scored with its weights dequantized once
    folded_diff = float((run(probe) - got).abs().max())
    if not folded_diff <= RELOAD_ATOL:
        raise EdgeError(f"{target}: the program with its weights dequantized once gives logits "
                        f"{folded_diff:.3g} away from the saved program")
    t0 = time.perf_counter()
    quality = _score(run, ck, context)
    times["score_s"] = round(time.perf_counter() - t0, 2)

    layers = sorted({spec(n).name for n, m in static.named_modules()
                     if isinstance(m, nn.Linear) and n != "lm_head"})
    meta = {"format": f"llama-edge-{target}-quantized-program", "version": 1,
            "program": path.name, "chunk": CHUNK, "context": context,
            "inputs": ["tokens (1, chunk) int64", "positions (chunk,) int64",
                       "mask (1, chunk, context) float32, 0 or mask_value",
                       f"caches: {ck.config.num_layers} past keys then "
                       f"{ck.config.num_layers} past values, each (1, "
                       f"{ck.config.num_kv_heads}, {context - CHUNK}, {ck.config.head_dim})"],
            "outputs": ["logits (1, chunk, vocab)",
                        "new keys then new values per layer, each (1, "
                        f"{ck.config.num_kv_heads}, chunk, {ck.config.head_dim})"],
            "mask_value": MASK_VALUE, "model_config": ck.config.to_hf_dict(),
            "quantization": {"activations": "16-bit", "layers": layers,
                             "lm_head": spec("lm_head").name, "notes": notes,
                             "calibration": {"windows": int(calib.shape[0]),
                                             "tokens": int(calib.numel())}}}
    (dest / "program.json").write_text(json.dumps(meta, indent=2) + "\n")
    info = {"path": target, "bytes": sum(p.stat().st_size for p in dest.iterdir()),
            "program": path.name, "dtype": "16a+" + "+".join(layers + [spec("lm_head").name]),
            "chunk": CHUNK, "context": context, "exact": False, "compiled": False,
            "quality": quality, "reload_max_abs_logit_diff": diff,
            # the probe text against the unquantized model, as the pipeline's verify reports
            "verify_tokens": probe.shape[1],
            "top1_agreement": round(float((got.argmax(-1) == probe_ref.argmax(-1)).float()
                                          .mean()), 4),
            "max_abs_logit_diff": float((got - probe_ref).abs().max()), "seconds": times,
            "quantization_notes": notes, "sdk": sdk.to_json()}
    st.report.setdefault("artifacts", {})[target] = info
    st.artifacts[target] = dest
    if not sdk.present:
        kld = quality.get("kld_mean")
        kld = f" (simulated mean KLD {kld:.4f})" if isinstance(kld, float) else ""
        st.deferred_errors.append(f"{target}: {sdk.problem}; the quantized program{kld} is in "
                                  f"{Path(cfg.out) / target}")
        return st
    t0 = time.perf_counter()
    pte = vendor.compile(ep, inputs, dest, sdk)
    info.update(compiled=True, pte=pte.name, pte_bytes=pte.stat().st_size,
                bytes=sum(p.stat().st_size for p in dest.iterdir()))
    times["compile_s"] = round(time.perf_counter() - t0, 2)
    return st


def _probe_ids(ck, context: int) -> torch.Tensor:
    from ..evaluate import PROBE_TEXT

    if ck.tokenizer is not None:
        ids = ck.tokenizer.encode(PROBE_TEXT)
    else:
        ids = list(range(1, 33))
    return torch.tensor([ids[:context]])
