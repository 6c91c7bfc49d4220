"""`auto`: choose per-unit precision for a size budget from measured sensitivity.

A unit is a group of modules quantized together: each block's attention linears, each block's
MLP linears, and the embedding (with the output layer when tied). For every unit and every
candidate scheme, the unit alone is quantized and the mean KL divergence of the model's
next-token distributions to the float model is measured on calibration windows:
`auto_recipe` measures with RTN (fast); `auto_quantize` (what `--recipe auto` uses) measures
each candidate as it will finally be quantized (AWQ for 4-bit) and assembles the model from the
chosen units. Assuming the
increments add up, the assignment that minimises the summed KLD under the bit budget is found
greedily: start every unit at its cheapest candidate, then repeatedly take the upgrade with the
best KLD saved per extra bit that still fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .recipes import QuantConfig, Recipe, RecipeError, Rule
from .schemes import DynamicInt8Act, IntWeight

# Candidate schemes, cheapest first (bits per weight: 4.125, 4.25, 4.5, 5.5, 6.25, 8 + one
# scale per row). 4- to 6-bit candidates use AWQ in the final recipe (the best low-bit
# algorithm measured); 8-bit ones are near-lossless with RTN. 5- and 6-bit weights are the edge
# runtime's (other targets refuse them).
def default_candidates(act: DynamicInt8Act | None = None) -> list[QuantConfig]:
    return [QuantConfig(IntWeight(4, 128), act, "awq"), QuantConfig(IntWeight(4, 64), act, "awq"),
            QuantConfig(IntWeight(4, 32), act, "awq"), QuantConfig(IntWeight(5, 32), act, "awq"),
            QuantConfig(IntWeight(6, 64), act, "awq"), QuantConfig(IntWeight(8, None), act)]


def embedding_candidates() -> list[QuantConfig]:
    return [QuantConfig(IntWeight(4, 32)), QuantConfig(IntWeight(5, 32)),
            QuantConfig(IntWeight(6, 64)), QuantConfig(IntWeight(8, None))]


@dataclass
class Unit:
    name: str  # glob pattern that selects its modules
    modules: list[str]
    params: int


def units_of(model: nn.Module) -> list[Unit]:
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    emb_ids = {id(m.weight) for m in mods.values() if isinstance(m, nn.Embedding)}
    groups: dict[str, list[str]] = {}
    for n, m in mods.items():
        if isinstance(m, nn.Embedding) or id(m.weight) in emb_ids:
            key = "embedding"
        elif "." in n:
            key = n.rsplit(".", 1)[0] + ".*"  # e.g. model.layers.3.self_attn.*
        else:
            key = n
        groups.setdefault(key, []).append(n)
    out = []
    for key, names in groups.items():
        seen, p = set(), 0
        for n in names:
            w = mods[n].weight
            if id(w) not in seen:
                seen.add(id(w))
                p += w.numel()
        out.append(Unit(key, names, p))
    return out


def _bits(cfg: QuantConfig, shape) -> float:
    out, n = shape
    g = cfg.weight.group_for(n)
    return out * n * cfg.weight.bits + out * (n // g) * 16 + (
        out * (n // g) * 8 if not getattr(cfg.weight, "symmetric", True) else 0)


def _log_probs(model: nn.Module, calib: torch.Tensor) -> list[torch.Tensor]:
    return [torch.log_softmax(model(w[None])[0].float(), -1) for w in calib]


def _mean_kld(model: nn.Module, calib: torch.Tensor, ref: list[torch.Tensor]) -> float:
    """Mean KL(reference || model) over every position of the calibration windows."""
    k = 0.0
    for w, lr in zip(calib, ref):
        lq = torch.log_softmax(model(w[None])[0].float(), -1)
        k += float((lr.exp() * (lr - lq)).sum(-1).mean())
    return k / len(calib)


@torch.no_grad()
def measure(model: nn.Module, calib: torch.Tensor, units: list[Unit],
            candidates: dict[str, list[QuantConfig]], progress=None) -> dict:
    """KLD (float model -> model with one unit quantized) per unit and candidate."""
    mods = dict(model.named_modules())
    ref = _log_probs(model, calib)
    table = {}
    total = sum(len(candidates[u.name]) for u in units)
    done = 0
    for u in units:
        weights = {}
        for n in u.modules:
            w = mods[n].weight
            weights.setdefault(id(w), (w, w.detach().clone()))
        for cfg in candidates[u.name]:
            for w, orig in weights.values():
                w.data.copy_(cfg.weight.quantize_tensor(orig.float(), u.name).dequantize())
            table[(u.name, cfg)] = _mean_kld(model, calib, ref)
            for w, orig in weights.values():
                w.data.copy_(orig)
            done += 1
            if progress:
                progress(done, total)
    return table


def allocate(units: list[Unit], shapes: dict[str, list[tuple]],
             candidates: dict[str, list[QuantConfig]], table: dict, budget_bits: float):
    """Greedy KLD-per-bit allocation under a total bit budget."""
    cost = {(u.name, c): sum(_bits(c, s) for s in shapes[u.name]) for u in units
            for c in candidates[u.name]}
    choice = {u.name: 0 for u in units}
    used = sum(cost[(u.name, candidates[u.name][0])] for u in units)
    if used > budget_bits:
        raise RecipeError(f"the size budget is below the smallest candidate assignment "
                          f"({used / 8e6:.1f} MB); raise the target")
    while True:
        best = None
        for u in units:
            cs = candidates[u.name]
            i = choice[u.name]
            cur_k, cur_b = table[(u.name, cs[i])], cost[(u.name, cs[i])]
            for j in range(i + 1, len(cs)):
                dk = cur_k - table[(u.name, cs[j])]
                db = cost[(u.name, cs[j])] - cur_b
                if dk <= 0 or used + db > budget_bits:
                    continue
                gain = dk / max(db, 1.0)
                if best is None or gain > best[0]:
                    best = (gain, u.name, j, db)
        if best is None:
            break
        _, name, j, db = best
        choice[name] = j
        used += db
    return choice, used


def auto_recipe(model: nn.Module, calib: torch.Tensor, target_bpw: float,
                act: DynamicInt8Act | None = None, progress=None) -> tuple[Recipe, dict]:
    """A recipe whose weights average at most `target_bpw` bits over every quantized
    parameter (scales included), chosen to minimise measured KLD."""
    units = units_of(model)
    mods = dict(model.named_modules())
    cands = {u.name: embedding_candidates() if u.name == "embedding" else
             default_candidates(act) for u in units}
    shapes = {}
    for u in units:
        seen, ss = set(), []
        for n in u.modules:
            w = mods[n].weight
            if id(w) not in seen:
                seen.add(id(w))
                ss.append(tuple(w.shape))
        shapes[u.name] = ss
        for c in list(cands[u.name]):
            if any(s[1] % c.weight.group_for(s[1]) for s in ss):
                cands[u.name].remove(c)
    table = measure(model, calib, units, cands, progress)
    total_params = sum(u.params for u in units)
    choice, used = allocate(units, shapes, cands, table, target_bpw * total_params)
    rules = []
    for u in units:
        cfg = cands[u.name][choice[u.name]]
        pats = u.modules if u.name == "embedding" else [u.name]
        rules += [Rule(p, cfg) for p in pats]
    report = {"target_bpw": target_bpw, "bpw": round(used / total_params, 4),
              "predicted_kld_sum": round(sum(table[(u.name, cands[u.name][choice[u.name]])]
                                             for u in units), 6),
              "choice": {u.name: cands[u.name][choice[u.name]].name for u in units}}
    return Recipe(f"auto-{target_bpw:g}bpw", tuple(rules), description="chosen by measured "
                  "sensitivity"), report


# ------------------------------------------------------------------ algorithm-aware auto
@torch.no_grad()
def auto_quantize(factory, calib_measure: torch.Tensor, calib_algo: torch.Tensor,
                  target_bpw: float, awq_map: list, act: DynamicInt8Act | None = None,
                  progress=None, widths: tuple[int, ...] = (4, 5, 6, 8)):
    """Like `auto_recipe`, but each candidate is measured as it will finally be quantized.

    factory() -> (fresh float model, its blocks). For every linear candidate the whole model
    is quantized once with the candidate's algorithm (AWQ below 8 bits, which folds scales into
    norms inside the same unit); a unit's sensitivity to a candidate is then measured by
    swapping that unit's quantized weights (and folded norms) into the float model, so the
    measured KLD is the one the final model gets, not RTN's. The final model is assembled
    from the chosen units. `widths`: the weight bit widths the candidates may have.
    Returns (model, QuantReport-like dict).
    """
    from .apply import QuantLinear, quantize

    base, _ = factory()
    units = units_of(base)
    mods = dict(base.named_modules())
    ins = {mods[n].weight.shape[1] for u in units if u.name != "embedding" for n in u.modules}
    lin_cands = [c for c in default_candidates(act) if c.weight.bits in widths
                 and all(i % c.weight.group_for(i) == 0 for i in ins)]
    params = dict(base.named_parameters())
    unit_of_module = {n: u.name for u in units for n in u.modules}
    # snapshots: candidate index -> unit -> {"linears": {name: (qt, cfg)}, "params": {...}}
    snaps: list[dict] = []
    for ci, cfg in enumerate(lin_cands):
        m, blocks = factory()
        rules = [Rule(u.name, cfg) for u in units if u.name != "embedding"]
        rec = Recipe(f"auto-candidate-{cfg.name}", tuple(rules))
        quantize(m, rec, calib_algo if rec.needs_calibration() else None, blocks=blocks,
                 awq_map=awq_map)
        snap: dict = {u.name: {"linears": {}, "params": {}} for u in units}
        for n, mod in m.named_modules():
            if isinstance(mod, QuantLinear) and n in unit_of_module:
                snap[unit_of_module[n]]["linears"][n] = (mod.qt, mod.act, mod.config)
        for pn, p in m.named_parameters():
            if pn in params and not torch.equal(p, params[pn]):
                owner = _fold_owner(pn, awq_map, unit_of_module)
                if owner is not None:
                    snap[owner]["params"][pn] = p.detach().clone()
        snaps.append(snap)
        del m
        if progress:
            progress(ci + 1, len(lin_cands) + 1)
    emb_dim = mods[next(u for u in units if u.name == "embedding").modules[0]].weight.shape[1]
    emb_cands = [c for c in embedding_candidates() if c.weight.bits in widths
                 and emb_dim % c.weight.group_for(emb_dim) == 0]
    ref = _log_probs(base, calib_measure)

    def kld():
        return _mean_kld(base, calib_measure, ref)

    table, cands = {}, {}
    for u in units:
        if u.name == "embedding":
            cands[u.name] = emb_cands
            w = mods[u.modules[0]].weight
            orig = w.detach().clone()
            for c in emb_cands:
                w.data.copy_(c.weight.quantize_tensor(orig.float(), u.name).dequantize())
                table[(u.name, c)] = kld()
            w.data.copy_(orig)
            continue
        cands[u.name] = lin_cands
        for ci, c in enumerate(lin_cands):
            s = snaps[ci][u.name]
            saved = {}
            for n, (qt, _, _) in s["linears"].items():
                saved[n] = mods[n].weight.detach().clone()
                mods[n].weight.data.copy_(qt.dequantize())
            for pn, v in s["params"].items():
                saved[pn] = params[pn].detach().clone()
                params[pn].data.copy_(v)
            # the activation quantization of 8da schemes is part of the measured error
            acts = {n: a for n, (_, a, _) in s["linears"].items() if a is not None}
            hooks = [mods[n].register_forward_pre_hook(
                lambda mod, args, a=a: (a.fake_quantize(args[0]),)) for n, a in acts.items()]
            try:
                table[(u.name, c)] = kld()
            finally:
                for h in hooks:
                    h.remove()
            for k, v in saved.items():
                (mods[k].weight if k in mods else params[k]).data.copy_(v)
    shapes = {u.name: [tuple(mods[n].weight.shape) for n in dict.fromkeys(
        n for n in u.modules if not (u.name == "embedding" and n != u.modules[0]))]
        for u in units}
    total = sum(u.params for u in units)
    choice, used = allocate(units, shapes, cands, table, target_bpw * total)
    # assemble: float model + chosen units
    final, _ = factory()
    fparams = dict(final.named_parameters())
    report = {"target_bpw": target_bpw, "bpw": round(used / total, 4), "choice": {}}
    emb_cfg = None
    for u in units:
        c = cands[u.name][choice[u.name]]
        report["choice"][u.name] = c.name
        if u.name == "embedding":
            emb_cfg = c
            continue
        s = snaps[lin_cands.index(c)][u.name]
        for n, (qt, a, cfg) in s["linears"].items():
            parent, _, leaf = n.rpartition(".")
            setattr(final.get_submodule(parent), leaf, QuantLinear(qt, a, cfg))
        for pn, v in s["params"].items():
            fparams[pn].data.copy_(v)
    emb_unit = next(u for u in units if u.name == "embedding")
    # an output layer in the embedding's unit (tied) takes the linears' activation handling
    emb_mods = {n: m for n, m in base.named_modules() if n in emb_unit.modules}
    rep = quantize(final, Recipe("auto-embedding", tuple(
        Rule(n, emb_cfg if act is None or isinstance(emb_mods[n], nn.Embedding)
             else QuantConfig(emb_cfg.weight, act)) for n in emb_unit.modules)))
    report["predicted_kld_sum"] = round(sum(table[(u.name, cands[u.name][choice[u.name]])]
                                            for u in units), 6)
    if progress:
        progress(len(lin_cands) + 1, len(lin_cands) + 1)
    return final, report, rep


def _fold_owner(param_name: str, awq_map: list, unit_of_module: dict) -> str | None:
    """The unit whose consumers a folded parameter (e.g. a norm weight) feeds."""
    mod = param_name.rsplit(".", 1)[0]
    for producer, consumers in awq_map:
        if mod.endswith("." + producer):
            prefix = mod[: -len(producer)]
            return unit_of_module.get(prefix + consumers[0])
    return None
