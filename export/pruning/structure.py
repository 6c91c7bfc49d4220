"""Structured pruning: make a smaller, still standard Llama from a loaded checkpoint.

Four kinds, each removing whole structures so the result is an ordinary dense model that every
quantization recipe and lowering target accepts:

* layers=N   whole decoder blocks (config num_hidden_layers shrinks),
* ffn=F      a fraction F of the SwiGLU intermediate channels, the same count in every layer
             (intermediate_size shrinks) or, with `ffn-per-layer`, counts chosen by one global
             ranking (config layer_intermediate_sizes),
* heads=N    N key/value groups of every layer with all their query heads (GQA stays intact:
             num_key_value_heads and num_attention_heads shrink together),
* vocab=FILE tokens the corpus FILE never uses (see vocab.py).

What to remove is chosen by one of three methods:

* importance  measured on calibration text: for a block, how little it changes the hidden
              state (1 - cosine similarity of its input and output, re-measured after each
              removal); for an FFN channel, the RMS of its activation silu(gate)*up times the
              norm of its down_proj column (the size of what it adds to the residual stream);
              for a KV group, the RMS norm of what its query heads add through o_proj.
* magnitude   weights only: the same quantities with activations left out (block: norms of
              o_proj and down_proj; channel: |gate row| |up row| |down column|; group: |v rows|
              |o columns|).
* random      a seeded random choice (the baseline every method must beat).

Order: layers first (measured on the full model), then heads and FFN channels (measured on the
model without those layers), then optional healing (heal.py), then the vocabulary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from edge.config import LlamaConfig

from ..loaders.common import Checkpoint
from .spec import CALIB_SEQ_LEN, CALIB_WINDOWS, PruneError, PruneSpec, check_spec
from .vocab import apply_vocab, plan_vocab

# ---------------------------------------------------------------------------- measurement
def _model(cfg: LlamaConfig, tensors: dict, seq_len: int):
    from ..model import LlamaModel

    return LlamaModel.from_state_dict(cfg, tensors, torch.float32, max_seq_len=seq_len)


@dataclass
class _Stats:
    """Activation statistics of one calibration pass, per layer."""

    ffn_sq: list  # (ffn_l,) sum over tokens of act^2
    group_sq: list  # (n_kv,) sum over tokens of |o_proj contribution of the group|^2
    hidden_sq: list  # float: sum over tokens of |residual at the MLP input|^2
    tokens: int = 0


@torch.inference_mode()
def _activation_stats(cfg: LlamaConfig, tensors: dict, ids: torch.Tensor) -> _Stats:
    model = _model(cfg, tensors, ids.shape[1])
    n = cfg.num_layers
    st = _Stats([torch.zeros(cfg.ffn_size(i), dtype=torch.float64) for i in range(n)],
                [torch.zeros(cfg.num_kv_heads, dtype=torch.float64) for _ in range(n)],
                [0.0] * n)
    per_group = (cfg.num_heads // cfg.num_kv_heads) * cfg.head_dim
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def down_in(mod, args, i=i):
            a = args[0].reshape(-1, args[0].shape[-1]).double()  # (tokens, ffn)
            st.ffn_sq[i] += a.pow(2).sum(0)

        def o_in(mod, args, i=i):
            x = args[0].reshape(-1, args[0].shape[-1])  # (tokens, q_dim)
            w = mod.weight  # (hidden, q_dim)
            for g in range(cfg.num_kv_heads):
                cols = slice(g * per_group, (g + 1) * per_group)
                st.group_sq[i][g] += float((x[:, cols] @ w[:, cols].T).double().pow(2).sum())

        def mlp_norm_in(mod, args, i=i):
            st.hidden_sq[i] += float(args[0].double().pow(2).sum())

        hooks += [layer.mlp.down_proj.register_forward_pre_hook(down_in),
                  layer.self_attn.o_proj.register_forward_pre_hook(o_in),
                  layer.post_attention_layernorm.register_forward_pre_hook(mlp_norm_in)]
    try:
        for w in ids:
            model.hidden_states(w.unsqueeze(0))  # the output layer is not needed
            st.tokens += w.numel()
    finally:
        for h in hooks:
            h.remove()
    return st


@torch.inference_mode()
def _block_change(model, ids: torch.Tensor, active: list[int]) -> dict[int, float]:
    """Mean over tokens of 1 - cos(block input, block output) for the active blocks, running
    the model with only those blocks."""
    layers = model.model.layers
    score = {i: 0.0 for i in active}
    count = 0
    hooks = [layers[i].register_forward_hook(
        lambda mod, args, out, i=i: score.__setitem__(
            i, score[i] + float((1 - F.cosine_similarity(args[0], out, dim=-1)).sum())))
        for i in active]
    model.model.layers = torch.nn.ModuleList(layers[i] for i in active)
    try:
        for w in ids:
            model.hidden_states(w.unsqueeze(0))
            count += w.numel()
    finally:
        model.model.layers = layers
        for h in hooks:
            h.remove()
    return {i: s / count for i, s in score.items()}


def _fro(t: torch.Tensor) -> float:
    return float(t.float().norm())


def choose_layers(cfg: LlamaConfig, tensors: dict, n: int, method: str,
                  ids: torch.Tensor | None, seed: int) -> tuple[list[int], dict]:
    """Indices of the n blocks to remove (sorted) and the scores they were chosen by."""
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(cfg.num_layers, generator=g)[:n].tolist()), {}
    if method == "magnitude":
        scores = {i: _fro(tensors[f"model.layers.{i}.self_attn.o_proj.weight"])
                  + _fro(tensors[f"model.layers.{i}.mlp.down_proj.weight"])
                  for i in range(cfg.num_layers)}
        return sorted(sorted(scores, key=scores.get)[:n]), scores
    # Greedy: drop the block that changes the hidden state least, then measure again without
    # it (the blocks after a removed one see different inputs).
    model = _model(cfg, tensors, ids.shape[1])
    active, removed, first = list(range(cfg.num_layers)), [], {}
    for _ in range(n):
        scores = _block_change(model, ids, active)
        first = first or scores
        drop = min(scores, key=scores.get)
        active.remove(drop)
        removed.append(drop)
    return sorted(removed), first


def _uniform_keep(scores: list[torch.Tensor], fraction: float, multiple: int
                  ) -> list[torch.Tensor]:
    """Per layer: indices (sorted) of the channels kept after removing the lowest-scoring
    `fraction` (rounded to whole blocks of `multiple`; the same count in equal-width layers)."""
    keep = []
    for s in scores:
        remove = round(fraction * s.numel() / multiple) * multiple
        keep.append(torch.sort(torch.argsort(s, descending=True)[: s.numel() - remove]).values)
    return keep


def _global_keep(scores: list[torch.Tensor], remove_units: int, multiple: int) -> list[torch.Tensor]:
    """Remove `remove_units` blocks of `multiple` channels across all layers: each layer's
    channels sorted by score, cut in blocks from the weakest, and the globally cheapest blocks
    (sum of scores) removed. Block costs rise within a layer, so taking the cheapest blocks
    globally always takes a layer's blocks in order. Every layer keeps at least one block."""
    order = [torch.argsort(s) for s in scores]
    costs = []
    for li, (s, o) in enumerate(zip(scores, order)):
        blocks = s[o].view(-1, multiple).sum(1)
        costs += [(float(c), li, b) for b, c in enumerate(blocks[:-1])]
    costs.sort()
    cut = [0] * len(scores)
    for _, li, _ in costs[:remove_units]:
        cut[li] += 1
    return [torch.sort(o[c * multiple:]).values for o, c in zip(order, cut)]


def choose_ffn(cfg: LlamaConfig, tensors: dict, spec: PruneSpec, stats: _Stats | None
               ) -> list[torch.Tensor]:
    """Kept channel indices per layer."""
    scores = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}.mlp."
        down = tensors[p + "down_proj.weight"].float()  # (hidden, ffn)
        if spec.method == "importance":
            rms = (stats.ffn_sq[i] / stats.tokens).sqrt().float()
            s = rms * down.norm(dim=0)
            if spec.ffn_per_layer:  # comparable across layers: relative to the residual's size
                s = s / math.sqrt(stats.hidden_sq[i] / stats.tokens)
        elif spec.method == "magnitude":
            s = (tensors[p + "gate_proj.weight"].float().norm(dim=1)
                 * tensors[p + "up_proj.weight"].float().norm(dim=1) * down.norm(dim=0))
        else:
            s = torch.rand(cfg.ffn_size(i), generator=torch.Generator().manual_seed(
                spec.seed * 1000 + i))
        scores.append(s.double())
    m = spec.multiple
    if spec.ffn_per_layer:
        total = sum(s.numel() for s in scores)
        return _global_keep(scores, round(spec.ffn * total / m), m)
    return _uniform_keep(scores, spec.ffn, m)


def choose_groups(cfg: LlamaConfig, tensors: dict, spec: PruneSpec, stats: _Stats | None
                  ) -> list[torch.Tensor]:
    """Kept KV group indices per layer."""
    q_per = cfg.num_heads // cfg.num_kv_heads
    keep = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}.self_attn."
        if spec.method == "importance":
            s = stats.group_sq[i]
        elif spec.method == "magnitude":
            v = tensors[p + "v_proj.weight"].float().view(cfg.num_kv_heads, -1)
            o = tensors[p + "o_proj.weight"].float().view(-1, cfg.num_kv_heads,
                                                          q_per * cfg.head_dim)
            s = v.norm(dim=1) * o.pow(2).sum((0, 2)).sqrt()
        else:
            s = torch.rand(cfg.num_kv_heads, generator=torch.Generator().manual_seed(
                spec.seed * 1000 + 500 + i))
        keep.append(torch.sort(torch.argsort(s, descending=True)[: cfg.num_kv_heads - spec.heads]
                               ).values)
    return keep


# ---------------------------------------------------------------------------- surgery
def remove_layers(cfg: LlamaConfig, tensors: dict, drop: list[int]) -> tuple[LlamaConfig, dict]:
    """Delete whole decoder blocks and renumber the rest."""
    kept = [i for i in range(cfg.num_layers) if i not in set(drop)]
    out = {k: v for k, v in tensors.items() if not k.startswith("model.layers.")}
    for new, old in enumerate(kept):
        pre = f"model.layers.{old}."
        for k, v in tensors.items():
            if k.startswith(pre):
                out[f"model.layers.{new}." + k[len(pre):]] = v
    lis = cfg.layer_intermediate_sizes
    return cfg.replace(num_layers=len(kept), layer_intermediate_sizes=(
        None if lis is None else tuple(lis[i] for i in kept))), out


def keep_ffn(cfg: LlamaConfig, tensors: dict, keep: list[torch.Tensor]
             ) -> tuple[LlamaConfig, dict]:
    """Slice gate/up rows and down_proj columns to the kept channels of each layer."""
    out = dict(tensors)
    for i, idx in enumerate(keep):
        p = f"model.layers.{i}.mlp."
        out[p + "gate_proj.weight"] = tensors[p + "gate_proj.weight"][idx].contiguous()
        out[p + "up_proj.weight"] = tensors[p + "up_proj.weight"][idx].contiguous()
        out[p + "down_proj.weight"] = tensors[p + "down_proj.weight"][:, idx].contiguous()
    sizes = tuple(int(k.numel()) for k in keep)
    if len(set(sizes)) == 1:
        return cfg.replace(intermediate_size=sizes[0], layer_intermediate_sizes=None), out
    # intermediate_size stays the widest layer's, as the standard field's readers expect a max.
    return cfg.replace(intermediate_size=max(sizes), layer_intermediate_sizes=sizes), out


def keep_groups(cfg: LlamaConfig, tensors: dict, keep: list[torch.Tensor]
                ) -> tuple[LlamaConfig, dict]:
    """Keep the given KV groups of every layer with their query heads. Q/K/V rows are
    (head, head_dim) blocks and query heads of one group are adjacent, so whole groups slice
    cleanly; RoPE acts within a head and is unaffected."""
    q_per, d = cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    n_keep = int(keep[0].numel())
    out = dict(tensors)
    for i, groups in enumerate(keep):
        p = f"model.layers.{i}.self_attn."
        kv_rows = (groups[:, None] * d + torch.arange(d)).reshape(-1)
        q_rows = (groups[:, None] * (q_per * d) + torch.arange(q_per * d)).reshape(-1)
        out[p + "q_proj.weight"] = tensors[p + "q_proj.weight"][q_rows].contiguous()
        out[p + "k_proj.weight"] = tensors[p + "k_proj.weight"][kv_rows].contiguous()
        out[p + "v_proj.weight"] = tensors[p + "v_proj.weight"][kv_rows].contiguous()
        out[p + "o_proj.weight"] = tensors[p + "o_proj.weight"][:, q_rows].contiguous()
    return cfg.replace(num_kv_heads=n_keep, num_heads=n_keep * q_per), out


# ---------------------------------------------------------------------------- orchestration
@dataclass
class PruneReport:
    spec: dict
    params_before: int = 0
    params_after: int = 0
    removed_layers: list = field(default_factory=list)
    ffn_sizes: list = field(default_factory=list)
    kv_groups_kept: list = field(default_factory=list)
    vocab_before: int = 0
    vocab_after: int = 0
    heal: dict | None = None
    seconds: float = 0.0
    calibration_tokens: int = 0

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if v not in (None, [])}
        d["seconds"] = round(self.seconds, 2)
        return d


def calibration_windows(ck: Checkpoint, calib: Path | None, windows: int = CALIB_WINDOWS,
                        seq_len: int = CALIB_SEQ_LEN) -> torch.Tensor:
    from ..quantize import calibration_ids

    if ck.tokenizer is None:
        raise PruneError(f"{ck.path}: importance pruning and healing measure the model on "
                         "calibration text and this checkpoint has no tokenizer; use "
                         "--prune-method magnitude or random, or add tokenizer.json")
    return calibration_ids(ck.tokenizer, calib, windows, min(seq_len,
                                                             ck.config.max_position_embeddings))


def prune_tensors(cfg: LlamaConfig, tensors: dict, spec: PruneSpec, ids: torch.Tensor | None,
                  report: PruneReport | None = None) -> tuple[LlamaConfig, dict]:
    """Structural pruning (layers, then heads and FFN channels) of a float state dict. `ids`
    (n, seq) calibration tokens are needed by the importance method."""
    check_spec(spec, cfg)
    if spec.method == "importance" and ids is None and (spec.layers or spec.ffn or spec.heads):
        raise PruneError("importance pruning needs calibration tokens")
    report = report or PruneReport(spec.to_json())
    if spec.layers:
        drop, _ = choose_layers(cfg, tensors, spec.layers, spec.method, ids, spec.seed)
        cfg, tensors = remove_layers(cfg, tensors, drop)
        report.removed_layers = drop
    if spec.ffn or spec.heads:
        stats = (_activation_stats(cfg, tensors, ids) if spec.method == "importance" else None)
        if spec.heads:
            keep = choose_groups(cfg, tensors, spec, stats)
            report.kv_groups_kept = [k.tolist() for k in keep]
            cfg, tensors = keep_groups(cfg, tensors, keep)
        if spec.ffn:
            cfg, tensors = keep_ffn(cfg, tensors, choose_ffn(cfg, tensors, spec, stats))
    report.ffn_sizes = [cfg.ffn_size(i) for i in range(cfg.num_layers)]
    return cfg.validate("pruned config"), tensors


def prune_checkpoint(ck: Checkpoint, spec: PruneSpec, calib: Path | None = None, *,
                     heal_steps: int = 0, heal_budget: float | None = None, log=None
                     ) -> tuple[Checkpoint, PruneReport]:
    """A new in-memory Checkpoint pruned as `spec` asks (the input is left untouched)."""
    t0 = time.perf_counter()
    cfg = ck.config
    check_spec(spec, cfg)
    report = PruneReport(spec.to_json(), params_before=cfg.num_parameters(),
                         vocab_before=cfg.vocab_size)
    vocab_plan = None
    if spec.vocab is not None:  # fail on a bad corpus before the slow part
        vocab_plan = plan_vocab(ck, spec.vocab)
    need_ids = heal_steps > 0 or (spec.method == "importance"
                                  and (spec.layers or spec.ffn or spec.heads))
    ids = calibration_windows(ck, calib) if need_ids else None
    report.calibration_tokens = 0 if ids is None else int(ids.numel())
    tensors = {k: v.float() for k, v in ck.tensors.items()}
    new_cfg, tensors = prune_tensors(cfg, tensors, spec, ids, report)
    if heal_steps > 0 and new_cfg != cfg:
        from .heal import heal

        heal_ids = calibration_windows(ck, calib, windows=64, seq_len=128)
        tensors, report.heal = heal(new_cfg, tensors, cfg, ck.tensors, heal_ids, heal_steps,
                                    heal_budget, log=log)
    tokenizer = ck.tokenizer
    if vocab_plan is not None:
        new_cfg, tensors, tokenizer = apply_vocab(new_cfg, tensors, vocab_plan)
    new_cfg = new_cfg.replace(name=f"{cfg.name}-pruned").validate("pruned config")
    dtype = ck.dtype if ck.dtype in (torch.bfloat16, torch.float16) else torch.float32
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    generation = dict(ck.generation)
    if vocab_plan is not None:
        generation = vocab_plan.map_generation(generation)
    out = replace(ck, config=new_cfg, tensors=tensors, tokenizer=tokenizer,
                  generation=generation, notes=[*ck.notes, f"pruned: {describe(report)}"])
    report.params_after = new_cfg.num_parameters()
    report.vocab_after = new_cfg.vocab_size
    report.seconds = time.perf_counter() - t0
    return out, report


def describe(report: PruneReport) -> str:
    parts = []
    s = report.spec
    if report.removed_layers:
        parts.append(f"layers {report.removed_layers} removed")
    if s.get("heads"):
        parts.append(f"{s['heads']} KV group(s) per layer removed")
    if s.get("ffn"):
        sizes = sorted(set(report.ffn_sizes))
        parts.append(f"FFN width {sizes[0] if len(sizes) == 1 else f'{sizes[0]}..{sizes[-1]}'}")
    if s.get("vocab"):
        parts.append(f"vocabulary {report.vocab_before} -> {report.vocab_after}")
    return (f"{', '.join(parts) or 'nothing removed'} by {s['method']}; parameters "
            f"{report.params_before / 1e6:.1f} M -> {report.params_after / 1e6:.1f} M")
