"""The export's checks of its own artifacts: verify (each artifact, run on its own runtime,
against the model it was lowered from, on the probe text) and quality (each artifact against
the unquantized source on the packaged evaluation text: PPL, mean KLD, same-top-token rate).

Verification tolerances. An artifact that computes the reference's arithmetic exactly (float
weights in the source precision, weight-only integers the reference dequantizes) differs from
it by the order of float32 sums alone, and that difference grows with the size of the model's
activations and logits: SmolLM2 pruned by magnitude (no recipe) differed by 0.0021 with logits
in the tens. So the bound is measured on the reference itself, per export: the same probe run
once as one prompt and once token by token through the KV cache (different matrix shapes, so
different summation orders); the artifact may differ by VERIFY_SPREAD_FACTOR times that spread,
and never needs to be closer than VERIFY_LOGIT_ATOL_EXACT. Faults are orders of magnitude above
either (tests inject swapped layers, doubled scales and a reversed tensor).

Artifacts whose runtime rounds activations itself are checked statistically: the mean
per-position correlation of their logits with the reference's. Measured on the probe text:
SmolLM2 with the mobile schemes (round to nearest) 0.992 (gguf), 0.996 (edge, xnnpack, onnx);
random weights at the Llama 3.2 1B shape 0.999 (xnnpack). The same SmolLM2 reference with one
structural fault: two layers swapped 0.981, one layer's down_proj scales doubled 0.958, a
projection's rows or columns reversed 0.906 / 0.912. Top-1 agreement is reported, not gated: it
was 0.82-0.94 for the sound artifacts (0.85 on the random 1B, whose top logits are close) and
0.53-0.76 for the faults.
"""

from __future__ import annotations

import torch

from edge.errors import EdgeError
from edge.memory import return_free_memory

from .. import targets
from ..evaluate import PROBE_TEXT, QUALITY_CTX, QUALITY_TEXT, read_text
from .progress import counted, stage_bar

# Floor of the exact-arithmetic bound (float32 artifacts of SmolLM2 measured 7e-5).
VERIFY_LOGIT_ATOL_EXACT = 1e-3
# How far past the reference's own reordering spread an exact artifact may be: its kernels sum
# in yet other orders (blocked, multi-threaded); measured at 1.2-3x on SmolLM2 f32 / int8 and
# the pruned models, 8x leaves room for other CPUs' kernels.
VERIFY_SPREAD_FACTOR = 8.0
VERIFY_MIN_LOGIT_CORR = 0.985


def probe_ids(ck) -> list[int]:
    return ck.tokenizer.encode(PROBE_TEXT) if ck.tokenizer is not None else list(range(1, 33))


def reordering_spread(ref, ids: list[int], whole: torch.Tensor) -> float:
    """Largest logit difference between the reference run as one prompt (`whole`, (n, vocab))
    and token by token through its KV cache."""
    ref.setup_cache(max_seq_len=len(ids))
    try:
        steps = torch.cat([ref(torch.tensor([[t]]), i)[0] for i, t in enumerate(ids)])
    finally:
        ref.clear_cache()
    return float((steps - whole).abs().max())


def exact_tolerance(spread: float) -> float:
    return max(VERIFY_LOGIT_ATOL_EXACT, VERIFY_SPREAD_FACTOR * spread)


def logit_correlation(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over positions of the Pearson correlation of two (n, vocab) logit matrices."""
    g, r = got.double(), ref.double()
    g, r = g - g.mean(-1, keepdim=True), r - r.mean(-1, keepdim=True)
    c = (g * r).sum(-1) / (g.norm(dim=-1) * r.norm(dim=-1)).clamp(min=1e-30)
    return float(c.mean())


@torch.inference_mode()
def stage_verify(st):
    """Load every artifact with its runtime and compare it with the model it was lowered from
    (the quantized reference when a recipe ran)."""
    from ..model import reference_model

    ck = st.checkpoint
    ids = probe_ids(ck)
    x = torch.tensor([ids])
    ref = st.model if st.model is not None else reference_model(ck.config, ck.tensors,
                                                                len(ids) + 1)
    ref_logits = ref(x)[0]
    spread = None
    checked = {n: p for n, p in st.artifacts.items() if targets.get(n).artifact_logits}
    bar = stage_bar("verify", len(checked), "artifact")
    try:
        for name, path in checked.items():
            bar.set_postfix_str(name)
            got = targets.get(name).artifact_logits(path, len(ids) + 1)(x)
            bar.update(1)
            agree = float((got.argmax(-1) == ref_logits.argmax(-1)).float().mean())
            diff = float((got - ref_logits).abs().max())
            corr = logit_correlation(got, ref_logits)
            info = st.report["artifacts"][name]
            info.update(verify_tokens=len(ids), top1_agreement=round(agree, 4),
                        max_abs_logit_diff=diff, logit_correlation=round(corr, 6))
            if info["exact"]:
                if spread is None:
                    spread = reordering_spread(ref, ids, ref_logits)
                tol = exact_tolerance(spread)
                info.update(reference_reordering_spread=spread, exact_tolerance=tol)
                if diff > tol:
                    raise EdgeError(
                        f"verification of the {name} artifact failed: logits differ by "
                        f"{diff:.3g} (> {tol:.3g}: {VERIFY_SPREAD_FACTOR:g} x the reference's "
                        f"own float32 reordering spread {spread:.3g}, at least "
                        f"{VERIFY_LOGIT_ATOL_EXACT:g}) from the model it was lowered from")
            if corr < VERIFY_MIN_LOGIT_CORR:
                raise EdgeError(
                    f"verification of the {name} artifact failed: its logits correlate "
                    f"{corr:.3f} (< {VERIFY_MIN_LOGIT_CORR}) with those of the model it was "
                    f"lowered from (top-1 agreement {agree:.0%})")
    finally:
        bar.close()
    if not st.cfg.keep_model:
        st.model = None  # its last use: the quality stage compares with the unquantized source
    return st


def _quality_ids(st) -> list[int]:
    return st.checkpoint.tokenizer.encode(read_text(QUALITY_TEXT))


def _spill_reference(st, ids: list[int], ctx: int, bar=None):
    """The unquantized source's logits on every window of the quality text, in a temporary
    file (quant.eval.SpilledLogits); the reference model is freed before this returns. The
    windows go through the model layer by layer (LlamaModel.logits_by_layer: each layer's
    weights upcast once, not once per window; the same logits); `bar` advances by one unit per
    window's share of the work."""
    from quant.eval import SpilledLogits, windows

    from ..model import reference_model
    from .stages import source_tensors

    wins = windows(ids, ctx)
    start = bar.n if bar is not None else 0

    def progress(f):
        bar.update(start + f * len(wins) - bar.n)

    model = reference_model(st.checkpoint.config, source_tensors(st), max_seq_len=ctx)
    logits = model.logits_by_layer([w.unsqueeze(0) for w in wins],
                                   progress if bar is not None else None)
    del model
    # SpilledLogits asks for the windows of (ids, ctx) in order, as they were given above
    spilled = SpilledLogits(lambda w: next(logits)[0], ids, ctx, dir=st.workdir)
    logits.close()  # frees the generator's frame, and with it the model
    return_free_memory()
    return spilled


@torch.inference_mode()
def stage_reference(st):
    """The source's logits on the quality text, computed right after quantizing while its float
    tensors are still resident; then they are dropped if every target lowers from the quantized
    model (stages.release_source). The quality stage scores the artifacts against these logits
    instead of reading the checkpoint again."""
    from quant.eval import windows

    from .stages import release_source

    if st.checkpoint.tokenizer is not None and any(
            targets.get(t).artifact_logits is not None for t in st.cfg.targets):
        ids = _quality_ids(st)
        bar = stage_bar("reference", len(windows(ids, QUALITY_CTX)), "window")
        try:
            st.reference_logits = _spill_reference(st, ids, QUALITY_CTX, bar)
        finally:
            bar.close()
    release_source(st)
    return st


@torch.inference_mode()
def stage_quality(st):
    """PPL, mean KLD and same-top-token rate of every artifact against the source."""
    from quant.eval import compare, windows

    early, st.reference_logits = st.reference_logits, None
    if st.checkpoint.tokenizer is None:
        st.report["quality"] = "skipped: the checkpoint has no tokenizer"
        return st
    scored = {n: p for n, p in st.artifacts.items()
              if targets.get(n).artifact_logits is not None}
    if not scored:
        if early is not None:
            early.close()
        return st
    ids = _quality_ids(st)
    # windows no longer than the shortest context an artifact was exported with
    ctx = min([QUALITY_CTX] + [st.report["artifacts"][n]["max_context"] for n in scored
                               if "max_context" in st.report["artifacts"][n]])
    if early is not None and early.wins.shape[1] != ctx:
        early.close()
        early = None
    # one unit per window scored: the reference's (unless computed before), then each
    # artifact's
    n_win = len(windows(ids, ctx))
    bar = stage_bar("quality", n_win * ((early is None) + len(scored)), "window")
    try:
        # The reference's logits go to a temporary file and the reference is freed before any
        # artifact's runtime loads: the source's float weights (2.5 GB for a 1B model) and the
        # artifact (plus its runtime's prompt temporaries) are never resident together.
        ref_logits = early if early is not None else _spill_reference(st, ids, ctx, bar)
        with ref_logits:
            for name, path in scored.items():
                bar.set_postfix_str(name)
                run = targets.get(name).artifact_logits(path, ctx)
                r = compare(counted(run, bar), ref_logits, ids, ctx)
                del run
                return_free_memory()
                st.report["artifacts"][name]["quality"] = {**r.to_json(),
                                                          "text": QUALITY_TEXT.name}
    finally:
        bar.close()
    return st
