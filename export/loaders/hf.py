"""Hugging Face checkpoint directories.

config.json (older rope_theta/rope_scaling keys or newer rope_parameters), one or several
*.safetensors files (with model.safetensors.index.json), generation_config.json, tokenizer.json
/ tokenizer_config.json. Pickled pytorch_model.bin files are refused unless the caller opts in,
and then loaded with weights_only=True. Repository code (modeling_*.py) is never imported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge.config import LlamaConfig
from edge.errors import CheckpointError, ConfigError

from .common import Checkpoint, check_finite, check_shapes, check_state_dict, resolve_tied
from .safetensors_io import SafetensorsFile, loads_strict


def _read_json(path: Path, what: str):
    try:
        return loads_strict(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, f"{what} is missing") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(path, f"{what} is not valid JSON ({e})") from None


def _shards(root: Path) -> tuple[dict[str, SafetensorsFile], dict[str, str]]:
    """Open every shard, return (files, tensor name -> shard name), cross-checked with the
    index when there is one."""
    index_path = root / "model.safetensors.index.json"
    if index_path.exists():
        index = _read_json(index_path, "the shard index")
        wmap = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise CheckpointError(index_path, "field 'weight_map' must map tensor names to "
                                  "shard file names")
        files = {}
        for shard in sorted(set(wmap.values())):
            sp = (root / shard)
            if Path(shard).name != shard or not sp.is_file():
                raise CheckpointError(index_path, f"names shard '{shard}', which is not a file "
                                      f"in {root}")
            files[shard] = SafetensorsFile(sp)
        owner = {}
        for shard, f in files.items():
            for name in f.tensors:
                if name in owner:
                    raise CheckpointError(f.path, f"tensor '{name}' is also in shard "
                                          f"'{owner[name]}'")
                owner[name] = shard
        for name, shard in wmap.items():
            if owner.get(name) != shard:
                where = f"is in '{owner[name]}'" if name in owner else "is in no shard"
                raise CheckpointError(index_path, f"maps tensor '{name}' to '{shard}' but it "
                                      f"{where}")
        for name in owner:
            if name not in wmap:
                raise CheckpointError(index_path, f"does not list tensor '{name}' "
                                      f"(found in '{owner[name]}')")
        return files, owner
    singles = sorted(root.glob("*.safetensors"))
    if not singles:
        if list(root.glob("pytorch_model*.bin")):
            return {}, {}
        raise CheckpointError(root, "no *.safetensors weights found (expected "
                              "model.safetensors or a sharded set with "
                              "model.safetensors.index.json)")
    if len(singles) > 1:
        raise CheckpointError(root, f"{len(singles)} safetensors files but no "
                              "model.safetensors.index.json to say how they fit together")
    f = SafetensorsFile(singles[0])
    return {singles[0].name: f}, {n: singles[0].name for n in f.tensors}


def read_config(root: Path) -> LlamaConfig:
    cfg_path = root / "config.json"
    d = _read_json(cfg_path, "config.json")
    if isinstance(d, dict) and d.get("quantization_config"):
        raise CheckpointError(cfg_path, "has a quantization_config: already-quantized "
                              "checkpoints are not supported as input; give the bf16/fp16 "
                              "original")
    try:
        return LlamaConfig.from_hf_dict(d, str(cfg_path))
    except ConfigError as e:
        raise CheckpointError(root, str(e)) from None
    except (TypeError, ValueError) as e:  # a value inside a field (e.g. rope factor "big")
        raise CheckpointError(cfg_path, f"has a field of the wrong type or value ({e})") from None


def load_hf(root, allow_pickle: bool = False, load_tokenizer: bool = True) -> Checkpoint:
    root = Path(root)
    cfg = read_config(root)
    files, owner = _shards(root)
    if not files:
        if not allow_pickle:
            raise CheckpointError(root, "only pickled pytorch_model*.bin weights found; pickles "
                                  "can run code, so they are refused. Convert them to "
                                  "safetensors, or pass --allow-pickle to load them with "
                                  "torch.load(weights_only=True)")
        return _load_pickled(root, cfg, load_tokenizer)
    shapes = {n: files[s].tensors[n].shape for n, s in owner.items()}
    dtypes = {n: files[s].tensors[n].dtype for n, s in owner.items()}
    emb_shape = shapes.get("model.embed_tokens.weight", (cfg.vocab_size,))
    if emb_shape[:1] != (cfg.vocab_size,) and len(emb_shape) == 2:  # other ranks: check_shapes
        raise CheckpointError(root, f"config.json vocab_size={cfg.vocab_size} but "
                              "'model.embed_tokens.weight' has "
                              f"{shapes['model.embed_tokens.weight'][0]} rows")
    check_shapes(root, cfg, shapes, dtypes)
    tensors = {}
    for name, shard in owner.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        t = files[shard].get(name)
        check_finite(files[shard].path, name, t)
        tensors[name] = t
    resolve_tied(root, cfg, tensors, "lm_head.weight" in tensors)
    return _finish(root, "hf", cfg, tensors, load_tokenizer)


def _load_pickled(root: Path, cfg: LlamaConfig, load_tokenizer: bool) -> Checkpoint:
    tensors = {}
    for p in sorted(root.glob("pytorch_model*.bin")):
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # any unpickling failure: report, never fall back
            from . import looks_like

            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise CheckpointError(p, f"cannot be loaded safely with weights_only=True "
                                  f"({type(e).__name__}: {first}){looks_like(p)}") from None
        check_state_dict(p, sd)
        for k, v in sd.items():
            if k in tensors:
                raise CheckpointError(p, f"tensor '{k}' appears in two .bin shards")
            tensors[k] = v
    check_shapes(root, cfg, {k: tuple(v.shape) for k, v in tensors.items()})
    for k, v in tensors.items():
        check_finite(root, k, v)
    resolve_tied(root, cfg, tensors, "lm_head.weight" in tensors)
    return _finish(root, "hf", cfg, tensors, load_tokenizer)


def _finish(root: Path, fmt: str, cfg: LlamaConfig, tensors: dict, load_tokenizer: bool):
    gen = {}
    gpath = root / "generation_config.json"
    if gpath.exists():
        g = _read_json(gpath, "generation_config.json")
        if isinstance(g, dict):
            gen = {k: g[k] for k in ("temperature", "top_p", "top_k", "do_sample",
                                     "repetition_penalty", "eos_token_id", "bos_token_id",
                                     "max_new_tokens") if k in g}
            eos = gen.get("eos_token_id")
            if eos is not None:
                ids = tuple(eos) if isinstance(eos, list) else (eos,)
                bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < cfg.vocab_size)]
                if bad:
                    raise CheckpointError(gpath, f"eos_token_id {bad[0]!r} is outside the "
                                          f"vocabulary (size {cfg.vocab_size})")
                cfg = cfg.replace(eos_token_ids=tuple(dict.fromkeys(cfg.eos_token_ids + ids)))
    tok, template = None, None
    if load_tokenizer:
        from edge.tokenizer import Tokenizer

        if not (root / "tokenizer.json").exists():
            raise CheckpointError(root, "tokenizer.json is missing; the runtime needs the "
                                  "model's tokenizer next to its weights")
        tok = Tokenizer.from_hf_dir(root)
        template = tok.chat_template
        check_tokenizer(root, cfg, tok)
    return Checkpoint(root, fmt, cfg, tensors, tok, template, gen)


def check_tokenizer(path, cfg: LlamaConfig, tok) -> None:
    """A tokenizer that can emit ids the embedding does not have is a mismatched pair."""
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(path, f"the tokenizer has {tok.vocab_size} tokens but the "
                              f"embedding only {cfg.vocab_size} rows: tokenizer and model do "
                              "not match")
