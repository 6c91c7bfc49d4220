"""One tokenizer for every checkpoint source, built on the HF `tokenizers` library.

Three sources become the same `tokenizers.Tokenizer` underneath:

* an HF directory (`tokenizer.json` + `tokenizer_config.json`),
* GGUF metadata (`tokenizer.ggml.*`, byte-level 'gpt2' vocabularies only),
* a Meta Llama 3 `tokenizer.model` (tiktoken ranks), converted to vocab + merges.

`encode` treats its input as user text: special-token strings such as `<|eot_id|>` stay plain
text, so a prompt can never forge chat scaffolding. Scaffolding ids come from `id_of` instead.
This module is part of the torch-free runtime: `tokenizers` and the stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from contextlib import contextmanager
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from edge.errors import TokenizerError

MAX_INPUT_BYTES = 4 * 1024 * 1024
SERIAL_FORMAT = "llama-edge-tokenizer"
SERIAL_VERSION = 1

# Meta's Llama 3 split pattern (llama.cpp's 'llama-bpe' pre-tokenizer is the same).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2's pattern without its trailing `|\s+`, as llama.cpp writes it: with 'isolated' splitting,
# whitespace no alternative matches becomes its own piece, which is what that alternative did.
_GPT2_PATTERN_NO_TAIL = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# Llama 3.1 / 3.2 layout (Meta's llama-models tokenizer): these eleven, then reserved tokens
# numbered from 2 until there are 256 specials. HF's converted tokenizer.json names a few unused
# slots differently (e.g. 128005 is reserved_2 there), but every id that matters is the same.
LLAMA3_NUM_SPECIALS = 256
LLAMA3_NAMED_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
)

# Tokens that end generation whenever the vocabulary has them (llama.cpp marks the same ones EOG).
END_TOKEN_NAMES = ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>")

GGUF_MODELS = ("gpt2",)
_LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
GGUF_PRE_TYPES = ("smollm", *_LLAMA3_PRE, "gpt-2", "gpt2", "default")
_TT_NORMAL, _TT_UNKNOWN, _TT_CONTROL, _TT_USER_DEFINED = 1, 2, 3, 4
_LOOKS_SPECIAL = re.compile(r"^(<\|[^\s<>]+\|>|<[^\s<>|]+>|\[[A-Z_0-9]+\])$")
_GGUF_IDS = (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("unknown_token_id", "unk"),
             ("padding_token_id", "pad"))


# GPT-2's reversible byte -> printable character map: printable Latin-1 ('!'..'~', '¡'..'¬',
# '®'..'ÿ') stands for itself, every other byte for chr(256 + its index among the others).
_PRINTABLE = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
_OTHERS = [b for b in range(256) if b not in _PRINTABLE]
BYTE_TO_CHAR = [chr(b) if b in _PRINTABLE else chr(256 + _OTHERS.index(b)) for b in range(256)]
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_ALPHABET = dict(enumerate(BYTE_TO_CHAR))
_ALPHABET_TO_LATIN1 = {ord(c): b for b, c in enumerate(BYTE_TO_CHAR)}


def bytes_to_token_text(data: bytes) -> str:
    """Spell raw bytes in the byte-level alphabet (how byte-level vocabularies store tokens)."""
    return data.decode("latin-1").translate(_LATIN1_TO_ALPHABET)


def _field_str(raw, key: str, source: str) -> str:
    try:
        return raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{source}: metadata field '{key}' is not valid UTF-8 ({e}); "
                             "the file is corrupt") from None


def gguf_tokenizer_fields(reader, source: str = "GGUF file") -> dict:
    """The tokenizer metadata of a `gguf.GGUFReader` as plain values (strings decoded, arrays as lists)."""
    from gguf import GGUFValueType  # only callers that hold a reader need gguf installed

    keys = [k for k in reader.fields if k.startswith("tokenizer.") or k == "general.architecture"]
    arch = reader.fields.get("general.architecture")
    if arch is not None:
        size_key = _field_str(arch.parts[arch.data[0]], "general.architecture", source) + ".vocab_size"
        keys += [size_key] if size_key in reader.fields else []
    out: dict = {}
    for key in keys:
        f = reader.fields[key]
        kind, inner = (list(f.types) + [None, None])[:2]
        if kind == GGUFValueType.STRING:
            out[key] = _field_str(f.parts[f.data[0]], key, source)
        elif kind == GGUFValueType.ARRAY and inner == GGUFValueType.STRING:
            out[key] = [_field_str(f.parts[i], key, source) for i in f.data]
        elif kind == GGUFValueType.ARRAY:
            out[key] = [f.parts[i][0].item() for i in f.data]
        else:
            out[key] = f.parts[f.data[0]][0].item()
    return out


def _config_token(value) -> str | None:
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _config_template(value) -> str | None:
    """tokenizer_config.json holds one template or a list of named ones; take 'default'."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


@contextmanager
def _library_panics(message: str):
    """The tokenizer library's internal panics reach Python as pyo3's PanicException, which
    derives from BaseException, so `except Exception` lets them end the session: turn them
    into a TokenizerError with `message` (which says what failed and what to do)."""
    try:
        yield
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise TokenizerError(f"{message} (tokenizer library: {e})") from None


def _read_json(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{file}: not valid JSON ({e}); restore the file from the checkpoint") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{file}: expected a JSON object at the top level")
    return data


def _byte_level_bpe(vocab, merges, pre_tokenizer, ignore_merges: bool) -> _HFTokenizer:
    hf = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizer
    hf.decoder = decoders.ByteLevel()
    return hf


def _split_then_bytes(*patterns: str):
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, to_bytes])


def _gguf_pre_tokenizer(pre: str):
    if pre == "smollm":
        # SmolLM2's own tokenizer.json: each digit alone, then the GPT-2 byte-level split.
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _LLAMA3_PRE:
        return _split_then_bytes(LLAMA3_PATTERN)
    if pre in ("gpt-2", "gpt2"):  # llama.cpp spells it "gpt-2"
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # 'default': llama.cpp's fallback for files without a pre type, four splits applied in turn.
    return _split_then_bytes(r"[\p{P}\$\+<=>\^~\|]+", _GPT2_PATTERN_NO_TAIL, r"\p{N}+", r"[0-9][0-9][0-9]")


def _tiktoken_ranks(path: Path) -> list[bytes]:
    """Tokens of a tiktoken file in rank order, after checking every line."""
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tiktoken file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: byte {e.start} is not ASCII; "
                             "this is not a tiktoken tokenizer.model") from None
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}:"
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise TokenizerError(f"{where} expected '<base64 token> <rank>', got {line[:80]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise TokenizerError(f"{where} {parts[0][:40]!r} is not valid base64") from None
        rank = int(parts[1])
        if rank in by_rank:
            raise TokenizerError(f"{where} rank {rank} already used by another token")
        if token in seen:
            raise TokenizerError(f"{where} token {token!r} already has rank {seen[token]}")
        by_rank[rank], seen[token] = token, rank
    n = len(by_rank)
    if n == 0:
        raise TokenizerError(f"{path}: no tokens; this is not a tiktoken tokenizer.model")
    if max(by_rank) != n - 1:
        missing = next(r for r in range(n) if r not in by_rank)
        raise TokenizerError(f"{path}: ranks must run 0..{n - 1} without gaps; rank {missing} is missing")
    absent = [b for b in range(256) if bytes([b]) not in seen]
    if absent:
        raise TokenizerError(f"{path}: single byte 0x{absent[0]:02x} has no rank; every byte needs one")
    return [by_rank[r] for r in range(n)]


class Tokenizer:
    """Encode user text, decode ids, and expose the special ids generation and chat need."""

    def __init__(self, hf: _HFTokenizer, *, bos_id: int | None, eos_ids=(), add_bos: bool = False,
                 chat_template: str | None = None, unk_id: int | None = None, pad_id: int | None = None,
                 source: str = "tokenizer"):
        # Our encode never extracts special tokens from text. The flag is not part of the
        # serialised tokenizer.json, so HF consumers of to_json() still parse them as usual.
        hf.encode_special_tokens = True
        self._hf = hf
        self.source = source
        self.chat_template = chat_template
        self.add_bos = bool(add_bos)
        added = hf.get_added_tokens_decoder()
        self.special_ids: dict[str, int] = {t.content: i for i, t in sorted(added.items()) if t.special}
        self._added_by_name = {t.content: i for i, t in added.items()}
        self._added_by_id = {i: t.content for i, t in added.items()}
        self.vocab_size = max(hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        named = (("bos", bos_id), ("unk", unk_id), ("pad", pad_id), *(("eos", e) for e in eos_ids))
        for what, value in named:
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise TokenizerError(
                    f"{source}: {what} token id {value!r} is outside the vocabulary of {self.vocab_size} "
                    "tokens; the tokenizer files do not match each other, re-export them"
                )
        self.bos_id, self.unk_id, self.pad_id = bos_id, unk_id, pad_id
        ends = [*eos_ids, *(self.special_ids[n] for n in END_TOKEN_NAMES if n in self.special_ids)]
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(ends))
        self._byte_level = "ByteLevel" in (hf.decoder.__getstate__().decode() if hf.decoder else "")
        self._token_bytes: list[bytes] | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_hf_dir(cls, path) -> "Tokenizer":
        """Load `tokenizer.json` (+ `tokenizer_config.json`, `generation_config.json` if present)."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"{path}: no tokenizer.json; export the tokenizer with the model "
                                 "or pass its directory")
        config = _read_json(path / "tokenizer_config.json")
        extra = (_read_json(path / "generation_config.json") or {}).get("eos_token_id")
        extra = [extra] if isinstance(extra, int) else [e for e in extra or [] if isinstance(e, int)]
        text = (path / "tokenizer.json").read_text(encoding="utf-8")
        return cls.from_hf_json(text, config, source=str(path), extra_eos_ids=extra)

    @classmethod
    def from_hf_json(cls, json_text: str, tokenizer_config: dict | None = None, *,
                     source: str = "tokenizer.json", extra_eos_ids=()) -> "Tokenizer":
        """Build from the text of a `tokenizer.json` and an optional parsed `tokenizer_config.json`."""
        with _library_panics(f"{source}: tokenizer.json cannot be loaded; re-export it"):
            return cls._from_hf_json(json_text, tokenizer_config, source, extra_eos_ids)

    @classmethod
    def _from_hf_json(cls, json_text, tokenizer_config, source, extra_eos_ids) -> "Tokenizer":
        try:
            hf = _HFTokenizer.from_str(json_text)
        except Exception as e:  # the library reports parse errors as plain Exception
            raise TokenizerError(f"{source}: tokenizer.json cannot be loaded ({e}); re-export it") from None
        config = tokenizer_config or {}

        def token_id(field: str) -> int | None:
            name = _config_token(config.get(field))
            tid = None if name is None else hf.token_to_id(name)
            if name is not None and tid is None:
                raise TokenizerError(
                    f"{source}: tokenizer_config.json field '{field}' names {name!r}, which is not in the "
                    "vocabulary; fix the field or use the tokenizer files that came with the model"
                )
            return tid

        bos_id, add_bos = token_id("bos_token"), config.get("add_bos_token")
        if add_bos is None or bos_id is None:
            # Without the config saying so, the post-processor shows whether a BOS is added.
            try:
                full, plain = hf.encode("a").ids, hf.encode("a", add_special_tokens=False).ids
            except Exception as e:  # e.g. an empty vocabulary without an unknown token
                raise TokenizerError(f"{source}: tokenizer.json cannot encode the text 'a' ({e}); its "
                                     "vocabulary is empty or incomplete: re-export it") from None
            prefix = full[0] if len(full) > len(plain) and full[len(full) - len(plain):] == plain else None
            bos_id = prefix if bos_id is None else bos_id
            add_bos = prefix is not None and prefix == bos_id if add_bos is None else add_bos
        ours = config.get("llama_edge") if isinstance(config.get("llama_edge"), dict) else {}
        eos = [e for e in (token_id("eos_token"), *extra_eos_ids, *ours.get("eos_ids", [])) if e is not None]
        return cls(hf, bos_id=bos_id, eos_ids=eos, add_bos=add_bos, unk_id=token_id("unk_token"),
                   pad_id=token_id("pad_token"), chat_template=_config_template(config.get("chat_template")),
                   source=source)

    @classmethod
    def from_gguf_fields(cls, fields: dict, source: str) -> "Tokenizer":
        """Build from GGUF tokenizer metadata (see `gguf_tokenizer_fields`)."""

        def fail(key: str, problem: str, fix: str = "re-convert the model"):
            raise TokenizerError(f"{source}: field '{key}' {problem}; {fix}")

        for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in fields:
                fail(key, "is missing", "the GGUF has no usable tokenizer")
        model, pre = fields["tokenizer.ggml.model"], fields.get("tokenizer.ggml.pre", "default")
        hf_instead = "use the model's HF tokenizer files instead"
        if model not in GGUF_MODELS:
            fail("tokenizer.ggml.model", f"is {model!r}; supported tokenizer models: {', '.join(GGUF_MODELS)}"
                 " (byte-level BPE)", hf_instead)
        if pre not in GGUF_PRE_TYPES:
            fail("tokenizer.ggml.pre", f"is {pre!r}; supported pre-tokenizers: {', '.join(GGUF_PRE_TYPES)}",
                 hf_instead)
        tokens, merge_lines = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.merges"]
        n = len(tokens) if isinstance(tokens, list) else 0
        types = fields.get("tokenizer.ggml.token_type") or [_TT_NORMAL] * n
        for key, value, kind in (("tokens", tokens, str), ("merges", merge_lines, str),
                                 ("token_type", types, int)):
            if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
                fail(f"tokenizer.ggml.{key}", f"is not an array of {kind.__name__}")
        if len(types) != n:
            fail("tokenizer.ggml.token_type", f"has {len(types)} entries but 'tokenizer.ggml.tokens' has {n}")
        arch = fields.get("general.architecture")
        declared = fields.get(f"{arch}.vocab_size")
        if declared is not None and declared != n:
            fail(f"{arch}.vocab_size", f"is {declared} but 'tokenizer.ggml.tokens' has {n} entries")
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in vocab:
                fail("tokenizer.ggml.tokens", f"lists {tok!r} twice (ids {vocab[tok]} and {i})")
            vocab[tok] = i
        merges = [tuple(m.split(" ")) for m in merge_lines]
        for k, pair in enumerate(merges):
            if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab or "".join(pair) not in vocab:
                fail("tokenizer.ggml.merges", f"entry {k} ({' '.join(pair)!r}) does not join two tokens "
                     "of the vocabulary into a third", "the file is corrupt, re-convert the model")
        ids = {}
        for key, name in _GGUF_IDS:
            ids[name] = value = fields.get(f"tokenizer.ggml.{key}")
            if value is not None and not (type(value) is int and 0 <= value < n):
                fail(f"tokenizer.ggml.{key}", f"is {value!r}, outside the vocabulary of {n} tokens",
                     "fix the file's metadata or re-convert the model")

        # llama.cpp's llama3 pre-type matches a whole piece against the vocabulary before merging.
        llama3 = pre in _LLAMA3_PRE
        hf = _byte_level_bpe(vocab, merges, _gguf_pre_tokenizer(pre), ignore_merges=llama3)
        special = [tt in (_TT_CONTROL, _TT_UNKNOWN)
                   or (tt == _TT_USER_DEFINED and bool(_LOOKS_SPECIAL.match(t)))
                   for t, tt in zip(tokens, types)]
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, s in zip(tokens, special) if s])
        # llama.cpp matches user-defined tokens whole even in plain text, so they stay added tokens.
        hf.add_tokens([AddedToken(t, special=False, normalized=False)
                       for t, tt, s in zip(tokens, types, special) if tt == _TT_USER_DEFINED and not s])
        add_bos = fields.get("tokenizer.ggml.add_bos_token")
        return cls(hf, bos_id=ids["bos"], eos_ids=[ids["eos"]] if ids["eos"] is not None else [],
                   add_bos=llama3 if add_bos is None else add_bos,  # llama.cpp's default when absent
                   chat_template=fields.get("tokenizer.chat_template"), unk_id=ids["unk"], pad_id=ids["pad"],
                   source=source)

    @classmethod
    def from_tiktoken(cls, path, special_tokens: dict[str, int] | None = None, *,
                      chat_template: str | None = None) -> "Tokenizer":
        """Load a Meta Llama 3 `tokenizer.model` (`base64token rank` per line).

        Merges come from the ranks: every split (left, right) of a token whose halves are both
        tokens becomes a merge, ranked by the token's rank. BPE then joins exactly the adjacent
        pairs tiktoken joins (any pair whose concatenation is a token), lowest resulting rank
        first, as tiktoken does. Keeping only the split that BPE-by-lower-ranks reaches for each
        token would miss pairs that only meet in a longer word. The one case that can still
        differ is a tie between two different splits of one token at overlapping positions.
        """
        path = Path(path)
        ranked = _tiktoken_ranks(path)
        n = len(ranked)
        spelled = [bytes_to_token_text(b) for b in ranked]
        vocab = {s: r for r, s in enumerate(spelled)}
        merges = [(t[:cut], t[cut:]) for t in spelled for cut in range(1, len(t))
                  if t[:cut] in vocab and t[cut:] in vocab]
        if special_tokens is None:
            names = list(LLAMA3_NAMED_SPECIALS)
            reserved = range(2, 2 + LLAMA3_NUM_SPECIALS - len(names))
            names += [f"<|reserved_special_token_{i}|>" for i in reserved]
            special_tokens = {name: n + i for i, name in enumerate(names)}
        if sorted(special_tokens.values()) != list(range(n, n + len(special_tokens))):
            raise TokenizerError(
                f"{path}: special token ids must be {n}..{n + len(special_tokens) - 1} (right after the "
                f"{n} ranked tokens), each used once; got {sorted(special_tokens.values())[:6]}"
            )
        for name, sid in special_tokens.items():
            if name in vocab:
                raise TokenizerError(f"{path}: special token {name!r} is also a ranked token")
            vocab[name] = sid
        hf = _byte_level_bpe(vocab, merges, _split_then_bytes(LLAMA3_PATTERN), ignore_merges=True)
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in special_tokens])
        bos, eos = special_tokens.get("<|begin_of_text|>"), special_tokens.get("<|end_of_text|>")
        return cls(hf, bos_id=bos, eos_ids=[eos] if eos is not None else [], add_bos=bos is not None,
                   chat_template=chat_template, source=str(path))

    # ---------------------------------------------------------------- serialisation
    def to_json(self) -> str:
        """The underlying `tokenizer.json` text."""
        return self._hf.to_str()

    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer; JSON-serialisable."""
        return {"format": SERIAL_FORMAT, "version": SERIAL_VERSION, "tokenizer_json": self.to_json(),
                "bos_id": self.bos_id, "eos_ids": list(self.eos_ids), "add_bos": self.add_bos,
                "unk_id": self.unk_id, "pad_id": self.pad_id, "chat_template": self.chat_template,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        tag = (data.get("format"), data.get("version")) if isinstance(data, dict) else None
        if tag != (SERIAL_FORMAT, SERIAL_VERSION):
            raise TokenizerError(f"not a serialised llama-edge tokenizer of format '{SERIAL_FORMAT}' version "
                                 f"{SERIAL_VERSION}; re-export the model with a matching llama-edge")
        source = data.get("source") or "serialised tokenizer"
        try:
            hf = _HFTokenizer.from_str(data["tokenizer_json"])
        except Exception as e:
            raise TokenizerError(f"{source}: embedded tokenizer.json cannot be loaded ({e})") from None
        return cls(hf, bos_id=data.get("bos_id"), eos_ids=data.get("eos_ids") or [],
                   add_bos=data.get("add_bos"), chat_template=data.get("chat_template"),
                   unk_id=data.get("unk_id"), pad_id=data.get("pad_id"), source=source)

    def save(self, directory, chat_template: str | None = None) -> None:
        """Write tokenizer.json + tokenizer_config.json, loadable by `from_hf_dir` and HF AutoTokenizer.

        `chat_template` replaces this tokenizer's own template in the written config.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(self.to_json(), encoding="utf-8")
        name = self._added_by_id.get
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_id), "eos_token": name(self.eos_ids[0]) if self.eos_ids else None,
            "unk_token": name(self.unk_id), "pad_token": name(self.pad_id),
            "add_bos_token": self.add_bos, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
            # The full end-of-generation set has no standard HF key; from_hf_dir reads it back.
            "llama_edge": {"eos_ids": list(self.eos_ids)},
        }
        template = chat_template if chat_template is not None else self.chat_template
        if template is not None:
            config["chat_template"] = template
        text = json.dumps(config, indent=2, ensure_ascii=False)
        (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")

    # ---------------------------------------------------------------- use
    def encode(self, text: str) -> list[int]:
        """Token ids of user text; special-token strings stay text and no BOS is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        # A character is at most 4 UTF-8 bytes, so the exact size only matters near the cap.
        if len(text) * 4 > MAX_INPUT_BYTES:
            size = len(text) if len(text) > MAX_INPUT_BYTES else self._utf8_len(text)
            if size > MAX_INPUT_BYTES:
                raise TokenizerError(f"input text is {size} bytes, over the {MAX_INPUT_BYTES}-byte cap "
                                     "(MAX_INPUT_BYTES); split it into smaller pieces")
        try:
            with _library_panics(f"{self.source}: the tokenizer failed on this text; re-export the "
                                 "tokenizer with the model"):
                return self._hf.encode(text, add_special_tokens=False).ids
        except TokenizerError:
            raise
        except Exception as e:  # the library's own errors, e.g. an unknown token and no `unk` id
            self._utf8_len(text)  # names the offending character when that is the cause
            raise TokenizerError(f"{self.source}: the tokenizer cannot encode this text ({e}); use the "
                                 "tokenizer files that came with the model") from None

    @staticmethod
    def _utf8_len(text: str) -> int:
        try:
            return len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise TokenizerError(f"input text has an unpaired surrogate at character {e.start}; "
                                 "pass valid Unicode text") from None

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"{self.source}: token id {bad} is outside the vocabulary of "
                                 f"{self.vocab_size} tokens; the model and tokenizer do not match")
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`; special tokens appear as their text unless skip_special."""
        ids = self._check_ids(ids)
        with _library_panics(f"{self.source}: the tokenizer failed to decode token ids; re-export "
                             "the tokenizer with the model"):
            return self._hf.decode(ids, skip_special_tokens=skip_special)

    def id_of(self, token: str) -> int | None:
        """Id of an added (special or user-defined) token, or None if the vocabulary lacks it."""
        return self._added_by_name.get(token)

    def is_special(self, token_id: int) -> bool:
        return self._added_by_id.get(token_id) in self.special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes a token stands for; a special token gives its text as UTF-8."""
        (token_id,) = self._check_ids([token_id])
        if self._token_bytes is None:
            table = [b""] * self.vocab_size
            items = self._hf.get_vocab(with_added_tokens=False).items()
            odd = set("".join(t for t, _ in items)) - CHAR_TO_BYTE.keys() if self._byte_level else set()
            for tok, tid in items:
                if self._byte_level and odd.isdisjoint(tok):
                    table[tid] = tok.translate(_ALPHABET_TO_LATIN1).encode("latin-1")
                elif self._byte_level:  # spelled outside the byte alphabet: the library decodes it as text
                    table[tid] = tok.encode("utf-8")
                elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok):  # SentencePiece byte fallback
                    table[tid] = bytes([int(tok[3:5], 16)])
                else:
                    table[tid] = tok.replace("\u2581", " ").encode("utf-8")
            for tid, content in self._added_by_id.items():
                table[tid] = content.encode("utf-8")
            self._token_bytes = table
        return self._token_bytes[token_id]

    def drops_leading_space(self) -> bool:
        """Whether decode drops the first space of a sequence (SentencePiece-style decoders)."""
        if self._byte_level:
            return False
        word = next((t for t in self._hf.get_vocab().values() if self.token_bytes(t)[:1] == b" "
                     and self.token_bytes(t)[1:].isalpha()), None)
        return word is not None and self.decode([word]) == self.token_bytes(word)[1:].decode()


class StreamDecoder:
    """Turn ids arriving one at a time into text, never emitting half of a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._drop_space = tokenizer.drops_leading_space()

    def push(self, token_id: int) -> str:
        """Text completed by this token (empty while a multi-byte character is still pending)."""
        if self._skip_special and self._tok.is_special(token_id):
            return ""
        return self._emit(self._utf8.decode(self._tok.token_bytes(token_id)))

    def flush(self) -> str:
        """Whatever is still held back; an incomplete character at the end becomes U+FFFD."""
        text = self._emit(self._utf8.decode(b"", final=True))
        self._utf8.reset()
        return text

    def _emit(self, text: str) -> str:
        if self._drop_space and text:
            self._drop_space, text = False, text.removeprefix(" ")
        return text
