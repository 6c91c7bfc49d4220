"""Edge artifacts at the published Llama 3.2 shapes with random weights, for speed and memory
benchmarks (speed does not depend on weight values).

Weights are drawn tensor by tensor (normal, std 0.02; norms 1), quantized with the recipe's
schemes by round to nearest (calibrating algorithms need a real model, and change no byte
count), and written with the SmolLM2 tokenizer (fewer tokens than the embedding has rows, which
the artifact allows; generation quality is not the point).

    python benchmarks/make_edge.py llama3.2-1b OUT_DIR --recipe 8da4w
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.artifact import ACT_INT8, TensorEntry, write_artifact  # noqa: E402
from edge.config import PRESETS  # noqa: E402
from edge.errors import EdgeError  # noqa: E402
from edge.packing import from_float  # noqa: E402
from export.targets.edge import act_name, packed_quant  # noqa: E402
from quant.recipes import load_recipe  # noqa: E402


def random_edge(preset: str, out: Path, recipe_name: str, seed: int = 0, max_context: int = 4096,
                force: bool = False) -> Path:
    from export.loaders import load_checkpoint

    cfg = PRESETS[preset]
    recipe = load_recipe(recipe_name)
    tok = load_checkpoint("smollm2-135m-instruct").tokenizer
    g = torch.Generator().manual_seed(seed)
    weights, norms = {}, {}
    head_cfg = recipe.config_for("lm_head")
    head_act = act_name(head_cfg.act, "lm_head") if head_cfg and head_cfg.act else None
    for key, shape in cfg.expected_shapes().items():
        name = key.removesuffix(".weight")
        if len(shape) == 1:
            norms[name] = torch.ones(shape).numpy()
            continue
        w = torch.randn(shape, generator=g) * 0.02
        c = recipe.config_for(name)
        if c is None:
            weights[name] = TensorEntry(from_float(w.to(torch.bfloat16).float().numpy(), "bf16"),
                                        "bf16")
            continue
        qt = c.weight.quantize_tensor(w, name)
        act = act_name(c.act, name) if c.act is not None else None
        embedding = name == "model.embed_tokens"
        # the tied output layer reads the embedding: its activation handling decides row sums
        act_rows = head_act if embedding and cfg.tie_word_embeddings else act
        p = packed_quant(qt, act_rows == ACT_INT8, name)
        weights[name] = TensorEntry(p, qt.scheme, None if embedding else act)
    if cfg.tie_word_embeddings:
        emb = weights["model.embed_tokens"]
        weights["lm_head"] = TensorEntry(None, emb.scheme, head_act, tied_to="model.embed_tokens")
    return write_artifact(out, cfg, weights, norms, tok, "chatml", max_context,
                          recipe=f"{recipe.name} (random weights, round to nearest)", force=force)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--recipe", default="8da4w")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    try:
        path = random_edge(a.preset, a.out, a.recipe, a.seed, force=a.force)
    except EdgeError as e:
        raise SystemExit(f"error: {e}") from None
    print(path)


if __name__ == "__main__":
    main()
