"""`llama-export eval`: quality of a (quantized) model against its reference on a text."""

from __future__ import annotations

from pathlib import Path

import torch

from edge.errors import EdgeError
from quant.eval import compare

from .loaders import load_checkpoint
from .model import LlamaModel

# Texts above this are a mistake for an evaluation that runs on a CPU.
MAX_EVAL_BYTES = 8 * 1024 * 1024
# Every export scores its artifacts against the source on the packaged evaluation text (written
# for the project, independent of the calibration text) in windows of this length, and checks
# each artifact against the model it was lowered from on the probe text.
QUALITY_CTX = 256
QUALITY_TEXT = Path(__file__).resolve().parents[1] / "quant" / "data" / "eval.txt"
PROBE_TEXT = ("The library opens at nine in the morning and closes at six. On Saturdays it "
              "closes early, at one, and it is closed on Sundays and public holidays.")


def read_text(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"{p}: text file not found")
    if p.stat().st_size > MAX_EVAL_BYTES:
        raise EdgeError(f"{p}: larger than {MAX_EVAL_BYTES} bytes; use a shorter text")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EdgeError(f"{p}: not UTF-8 text (byte {e.start})") from None


def _logits_fn(model):
    return lambda w: model(w)[0]


def evaluate_artifact(model_path: str, text_path, reference: str, ctx: int = 512,
                      progress=None) -> dict:
    """An edge artifact, run by the edge kernels, against an unquantized reference checkpoint."""
    from edge.artifact import load_artifact
    from edge.engines.native import EdgeEngine

    art = load_artifact(model_path)
    if not 2 <= ctx <= art.max_context:
        raise EdgeError(f"--ctx must be in 2..{art.max_context} (the artifact's maximum), got {ctx}")
    ref_ck = load_checkpoint(reference)
    if ref_ck.config.vocab_size != art.config.vocab_size:
        raise EdgeError(f"{reference}: vocabulary ({ref_ck.config.vocab_size}) differs from the "
                        f"artifact's ({art.config.vocab_size}); cannot compare")
    ids = art.tokenizer.encode(read_text(text_path))
    if len(ids) < ctx:
        raise EdgeError(f"{text_path}: {len(ids)} tokens, fewer than one window of {ctx}")
    sess = EdgeEngine(art, max_context=ctx).session()
    ref_model = LlamaModel.from_state_dict(ref_ck.config, ref_ck.tensors, max_seq_len=ctx)
    r = compare(lambda w: torch.from_numpy(sess.logits_all(w[0].tolist())), _logits_fn(ref_model),
                ids, ctx, progress)
    return {"model": str(model_path), "text": str(text_path), "engine": "edge",
            "recipe": art.recipe_name, "file_mb": round(art.file_bytes / 1e6, 2),
            **r.to_json()}


def evaluate(model_path: str, text_path, recipe: str | None = None,
             reference: str | None = None, ctx: int = 512, calib=None, progress=None,
             ck=None, ref_ck=None) -> dict:
    from edge.artifact import is_artifact

    from .quantize import quantized_model

    if ck is None and is_artifact(model_path):
        if reference is None:
            raise EdgeError(f"{model_path}: an edge artifact is scored against its unquantized "
                            "checkpoint; give --reference CHECKPOINT")
        if recipe not in (None, "none"):
            raise EdgeError("--recipe applies to checkpoints; an edge artifact is already quantized")
        return evaluate_artifact(model_path, text_path, reference, ctx, progress)
    ck = ck or load_checkpoint(model_path)
    if ck.tokenizer is None:
        raise EdgeError(f"{model_path}: has no tokenizer; evaluation needs one")
    if ctx < 2 or ctx > ck.config.max_position_embeddings:
        raise EdgeError(f"--ctx must be in 2..{ck.config.max_position_embeddings}, got {ctx}")
    ids = ck.tokenizer.encode(read_text(text_path))
    if len(ids) < ctx:
        raise EdgeError(f"{text_path}: {len(ids)} tokens, fewer than one window of {ctx}")
    out: dict = {"model": str(model_path), "text": str(text_path)}
    ref_model = None
    if reference is not None or ref_ck is not None:
        ref_ck = ref_ck or load_checkpoint(reference)
        if ref_ck.config.vocab_size != ck.config.vocab_size:
            raise EdgeError(f"{reference}: vocabulary ({ref_ck.config.vocab_size}) differs "
                            f"from the model's ({ck.config.vocab_size}); cannot compare")
        ref_model = LlamaModel.from_state_dict(ref_ck.config, ref_ck.tensors, max_seq_len=ctx)
    if recipe is not None and recipe != "none":
        model, rep = quantized_model(ck, recipe, calib, max_seq_len=ctx)
        if ref_model is None:
            ref_model = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=ctx)
        out["recipe"] = recipe
        out["quantization"] = rep.totals()
        out["quantization"]["seconds"] = round(rep.seconds, 2)
    else:
        model = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=ctx)
    r = compare(_logits_fn(model), _logits_fn(ref_model) if ref_model is not None else None,
                ids, ctx, progress)
    out.update(r.to_json())
    return out


def eval_with_model(model: LlamaModel, ref: LlamaModel, tokenizer, text_path, ctx: int,
                    max_windows: int | None = None) -> dict:
    """Quality of an in-memory model against an in-memory reference (export reports)."""
    ids = tokenizer.encode(read_text(text_path))
    if max_windows:
        ids = ids[: ctx * max_windows]
    with torch.inference_mode():
        return compare(_logits_fn(model), _logits_fn(ref), ids, ctx).to_json()
