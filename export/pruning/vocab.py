"""Vocabulary pruning: keep the tokens a corpus uses, renumber them, slice the embedding and
output rows to match.

The tokenizer itself is rewritten (a new tokenizer.json with a dense vocabulary and ids
0..n-1), so the pruned checkpoint is an ordinary one: every target and runtime loads it with
no id map to apply. Kept, besides the corpus's own tokens:

* every added / special token, BOS, EOS, UNK, PAD,
* the tokens the chat format and the runtime's task prompts (summarize, rewrite) produce,
* every single-character token and byte-fallback token, so any text still encodes,
* every token some merge chain needs to build a kept token (the closure below).

Why the closure makes the corpus tokenize identically: BPE applies, at each step, the
lowest-ranked merge among adjacent pairs. Each merge it applies on the corpus produces a token
on the way to a final corpus token, so it is kept with both halves; dropped merges produce
tokens the corpus never reaches, so they were never the lowest-ranked applicable merge. The
pruned merge list (same order) therefore makes the same choice at every step. The result is
checked anyway: the corpus must encode to the mapped ids and decode to the same text.
Text outside the corpus still encodes (from the kept pieces), with more tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from edge.config import LlamaConfig

from ..loaders.common import Checkpoint
from .spec import PruneError

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_SCAFFOLD_MESSAGES = ([{"role": "user", "content": "x"}],
                      [{"role": "system", "content": "x"}, {"role": "user", "content": "x"},
                       {"role": "assistant", "content": "x"}])


@dataclass
class VocabPlan:
    keep: list[int]  # kept old ids, ascending; a token's new id is its position here
    tokenizer: object  # edge.tokenizer.Tokenizer over the new ids
    corpus_tokens: int

    def new_id(self, old: int) -> int:
        return self._index[old]

    def __post_init__(self):
        self._index = {o: n for n, o in enumerate(self.keep)}

    def map_generation(self, gen: dict) -> dict:
        """generation_config values naming token ids, renumbered (dropped ids removed)."""
        out = {}
        for k, v in gen.items():
            if k.endswith("token_id") and isinstance(v, int):
                if v in self._index:
                    out[k] = self._index[v]
            elif k.endswith("token_id") and isinstance(v, list):
                out[k] = [self._index[i] for i in v if isinstance(i, int) and i in self._index]
            else:
                out[k] = v
        return out


def _read_corpus(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PruneError(f"--prune: vocab corpus {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PruneError(f"--prune: vocab corpus {path} cannot be read as UTF-8 text ({e})") \
            from None
    if not text.strip():
        raise PruneError(f"--prune: vocab corpus {path} is empty")
    return text


def _product_ids(tok) -> set[int]:
    """Ids the chat format and the runtime's task prompts produce around any content."""
    from edge.chat import detect_chat_format, encode_chat
    from edge.tasks import REWRITE_PROMPT, STYLES, SUMMARY_PROMPT

    ids: set[int] = set()
    fmt = detect_chat_format(tok)
    for msgs in _SCAFFOLD_MESSAGES:
        ids.update(encode_chat(tok, msgs, fmt))
    for text in (SUMMARY_PROMPT.format(text=""), *(REWRITE_PROMPT.format(style=s, text="")
                                                   for s in STYLES.values()),
                 "system\n", "user\n", "assistant\n", "\n", "\n\n"):
        ids.update(tok.encode(text))
    return ids


def prune_tokenizer(tok, seed_ids: set[int], limit: int | None = None):
    """(new Tokenizer, kept old ids ascending): `tok` restricted to `seed_ids` plus what any
    text needs to stay encodable (see the module docstring). Only BPE tokenizers."""
    from tokenizers import Tokenizer as HFTokenizer

    from edge.tokenizer import Tokenizer

    data = json.loads(tok.to_json())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise PruneError(f"{tok.source}: vocabulary pruning supports BPE tokenizers; this one "
                         f"is {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    added = data.get("added_tokens") or []
    by_id.update({a["id"]: a["content"] for a in added})
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    keep = {by_id[i] for i in seed_ids if i in by_id}
    keep.update(a["content"] for a in added)
    keep.update(named for named in (by_id.get(i) for i in (tok.bos_id, tok.unk_id, tok.pad_id,
                                                            *tok.eos_ids) if i is not None)
                if named is not None)
    keep.update(t for t in vocab if len(t) == 1 or _BYTE_FALLBACK.match(t))
    producers: dict[str, list] = {}
    for a, b in merges:
        producers.setdefault(a + b, []).append((a, b))
    stack = list(keep)
    while stack:
        for pair in producers.get(stack.pop(), ()):
            for part in pair:
                if part not in keep:
                    keep.add(part)
                    stack.append(part)
    old_ids = sorted(i for i, t in by_id.items() if t in keep and (limit is None or i < limit))
    new_of = {old: new for new, old in enumerate(old_ids)}
    model["vocab"] = {by_id[o]: new_of[o] for o in old_ids if by_id[o] in vocab}
    model["merges"] = [[a, b] for a, b in merges if a in keep and b in keep and a + b in keep]
    data["added_tokens"] = [{**a, "id": new_of[a["id"]]} for a in added if a["id"] in new_of]
    _remap_post_processor(data.get("post_processor"), new_of, vocab)
    try:
        hf = HFTokenizer.from_str(json.dumps(data, ensure_ascii=False))
    except Exception as e:  # the library reports parse errors as plain Exception
        raise PruneError(f"{tok.source}: the pruned tokenizer does not load ({e})") from None
    m = new_of.get
    new = Tokenizer(hf, bos_id=m(tok.bos_id) if tok.bos_id is not None else None,
                    eos_ids=[new_of[e] for e in tok.eos_ids if e in new_of], add_bos=tok.add_bos,
                    chat_template=tok.chat_template,
                    unk_id=m(tok.unk_id) if tok.unk_id is not None else None,
                    pad_id=m(tok.pad_id) if tok.pad_id is not None else None,
                    source=f"{tok.source} (vocabulary pruned)")
    return new, old_ids


def _remap_post_processor(pp, new_of: dict, vocab: dict) -> None:
    """Renumber the ids a TemplateProcessing post-processor adds (BOS and the like)."""
    if not isinstance(pp, dict):
        return
    for sub in pp.get("processors") or []:
        _remap_post_processor(sub, new_of, vocab)
    for spec in (pp.get("special_tokens") or {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("ids"), list):
            spec["ids"] = [new_of[i] for i in spec["ids"]]


def plan_vocab(ck: Checkpoint, corpus: Path) -> VocabPlan:
    """Which tokens stay, with the rewritten tokenizer, checked on the corpus."""
    tok = ck.tokenizer
    if tok is None:
        raise PruneError(f"{ck.path}: vocabulary pruning needs the model's tokenizer and this "
                         "checkpoint has none")
    text = _read_corpus(corpus)
    ids = tok.encode(text)
    if not ids:
        raise PruneError(f"--prune: vocab corpus {corpus} has no tokens")
    cfg = ck.config
    named = {i for i in (cfg.bos_token_id, *cfg.eos_token_ids) if i is not None}
    new, keep = prune_tokenizer(tok, set(ids) | _product_ids(tok) | named, limit=cfg.vocab_size)
    index = {o: n for n, o in enumerate(keep)}
    got = new.encode(text)
    if got != [index.get(i, -1) for i in ids] or new.decode(got) != tok.decode(ids):
        raise PruneError(f"{tok.source}: the pruned tokenizer does not reproduce the corpus "
                         f"{corpus} token for token; vocabulary pruning is not supported for "
                         "this tokenizer")
    return VocabPlan(keep, new, len(ids))


def apply_vocab(cfg: LlamaConfig, tensors: dict, plan: VocabPlan
                ) -> tuple[LlamaConfig, dict, object]:
    """Slice embedding and output rows to the kept ids; renumber the config's special ids."""
    idx = torch.tensor(plan.keep, dtype=torch.long)
    out = dict(tensors)
    out["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][idx].contiguous()
    if "lm_head.weight" in tensors and not cfg.tie_word_embeddings:
        out["lm_head.weight"] = tensors["lm_head.weight"][idx].contiguous()
    else:
        out.pop("lm_head.weight", None)
    bos = plan.new_id(cfg.bos_token_id) if cfg.bos_token_id is not None else None
    eos = tuple(plan.new_id(e) for e in cfg.eos_token_ids if e in plan._index)
    return cfg.replace(vocab_size=len(plan.keep), bos_token_id=bos, eos_token_ids=eos), out, \
        plan.tokenizer
