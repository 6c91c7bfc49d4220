"""Lower a (possibly quantized) LlamaModel to a GGUF file that llama.cpp loads.

Packing (llama.cpp's block layouts, 32 values per block along the input dimension):

    Q8_0  (34 bytes): d fp16 | 32 x int8 q                      value = q * d
    Q4_0  (18 bytes): d fp16 | 16 bytes, byte j = (q[j] + 8) | (q[j + 16] + 8) << 4
                                                                 value = (nibble - 8) * d

Our symmetric int schemes store value = q * s with fp16-representable scales, so int8 maps to
Q8_0 and int4 ([-8, 7]) to Q4_0 with every integer and scale copied unchanged. A scheme whose
groups are a multiple of 32 (g64, g128, per channel on rows of 32k values) is also exact: each
scale is repeated over the 32-blocks of its group. Asymmetric schemes (zero points), FP8 and
groups that are not a multiple of 32 have no GGUF block type with the same values and are
refused. Activation quantization is not stored: llama.cpp always multiplies Q8_0 / Q4_0 weights
with activations it rounds to Q8_0 blocks itself (32 values, one fp16 scale).

Unquantized weights are written in the requested float type (F32, F16 or BF16), norms in F32.
Q / K rows are permuted to llama.cpp's interleaved rotary order here, integers and scales alike
(the permutation moves whole rows, so groups are untouched). The tokenizer, chat template and
special ids go into the `tokenizer.*` metadata, llama3 rope scaling into the `rope_freqs`
tensor. The file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.config import LlamaConfig, rope_inv_freq
from edge.errors import EdgeError

from . import Target
from .common import chat_template, dtype_for, model_to_lower

QK = 32  # llama.cpp's block length for Q8_0 and Q4_0
BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])
BLOCK_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
assert BLOCK_Q8_0.itemsize == 34 and BLOCK_Q4_0.itemsize == 18  # ggml's block_q8_0 / block_q4_0

# Token types of llama.cpp's vocabulary (llama_token_type).
TT_NORMAL, TT_CONTROL, TT_USER_DEFINED = 1, 3, 4
# Pre-tokenizer names llama.cpp knows, in the order a match is preferred.
PRE_TYPES = ("llama-bpe", "smollm", "gpt-2", "default")
_PRE_PROBE = ("Hello world! It's 2024-10-03, 12345 items cost $3.50 each.\n\n"
              "  Indented   text\twith\ttabs; ÉCOLE naïve 東京 123abc don't WE'LL I'm")
GGUF_TENSOR_KINDS = {"int8": "Q8_0", "int4": "Q4_0"}


# ------------------------------------------------------------------------------ block packing
def pack_q8_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q (rows, n) int8, d (rows, n / 32) fp16 -> (rows, n / 32 * 34) uint8."""
    rows, n = q.shape
    b = np.empty((rows, n // QK), BLOCK_Q8_0)
    b["d"] = d
    b["qs"] = q.reshape(rows, n // QK, QK)
    return b.view(np.uint8).reshape(rows, -1)


def pack_q4_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q (rows, n) int8 in [-8, 7], d (rows, n / 32) fp16 -> (rows, n / 32 * 18) uint8."""
    rows, n = q.shape
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(rows, n // QK, QK)
    b = np.empty((rows, n // QK), BLOCK_Q4_0)
    b["d"] = d
    b["qs"] = u[..., : QK // 2] | (u[..., QK // 2:] << 4)
    return b.view(np.uint8).reshape(rows, -1)


def unpack_q8_0(raw: np.ndarray, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_q8_0: (q (rows, n) int8, d (rows, n / 32) fp16)."""
    b = np.asarray(raw, np.uint8).reshape(-1).view(BLOCK_Q8_0).reshape(rows, n // QK)
    return b["qs"].reshape(rows, n).copy(), b["d"].copy()


def unpack_q4_0(raw: np.ndarray, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_q4_0: (q (rows, n) int8 in [-8, 7], d (rows, n / 32) fp16)."""
    b = np.asarray(raw, np.uint8).reshape(-1).view(BLOCK_Q4_0).reshape(rows, n // QK)
    qs = b["qs"]
    u = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8)
    return (u - 8).reshape(rows, n), b["d"].copy()


# ------------------------------------------------------------------------------ quantized tensors
def gguf_type_of(qt, name: str) -> str:
    """The GGUF block type holding a canonical QuantizedTensor unchanged, or a clear error."""
    scheme = qt.scheme
    fix = ("export with a recipe of symmetric int8 / int4 weights in groups of 32 (e.g. --recipe "
           "int8, int4-g32, mobile or 8da4w) for --target gguf")
    if scheme.startswith("fp8"):
        raise EdgeError(f"tensor '{name}' ({scheme}): GGUF has no FP8 block type; {fix}")
    if qt.zero_point is not None:
        raise EdgeError(f"tensor '{name}' ({scheme}): asymmetric (zero-point) weights have no "
                        f"GGUF type holding the same values (Q4_1 / Q8_1 store a float minimum, "
                        f"not an integer zero point); {fix}")
    if qt.bits not in (4, 8):
        raise EdgeError(f"tensor '{name}' ({scheme}): {qt.bits}-bit weights have no GGUF "
                        f"type; {fix}")
    if qt.group_size % QK:
        raise EdgeError(f"tensor '{name}' ({scheme}): groups of {qt.group_size} are not a "
                        f"multiple of GGUF's {QK}-value blocks (Q8_0 / Q4_0); {fix}")
    return "Q8_0" if qt.bits == 8 else "Q4_0"


def check_recipe(recipe) -> None:
    """Refuse, before any work, a recipe whose weight schemes have no GGUF block type (the same
    rules as gguf_type_of, per recipe rule; auto recipes are checked per tensor at lowering)."""
    from quant.schemes import FP8Weight

    for rule in recipe.rules:
        if rule.config is None:
            continue
        w, where = rule.config.weight, f"recipe '{recipe.name}', rule '{rule.pattern}'"
        fix = ("use symmetric int8 / int4 weights in groups of a multiple of 32 (e.g. --recipe "
               "int8, int4-g32, mobile or 8da4w) for --target gguf")
        if isinstance(w, FP8Weight):
            raise EdgeError(f"{where} ({w.name}): GGUF has no FP8 block type; {fix}")
        if not w.symmetric:
            raise EdgeError(f"{where} ({w.name}): asymmetric weights have no GGUF type holding "
                            f"the same values; {fix}")
        if w.group_size is not None and w.group_size % QK:
            raise EdgeError(f"{where} ({w.name}): groups of {w.group_size} are not a multiple "
                            f"of GGUF's {QK}-value blocks; {fix}")
        if w.bits not in (4, 8):
            raise EdgeError(f"{where} ({w.name}): {w.bits}-bit weights in groups have no GGUF "
                            f"type holding the same bytes (Q5_0 / Q6_K lay out and scale their "
                            f"blocks differently); {fix}")


def pack_quantized(qt, name: str, rows_perm: Callable | None = None) -> tuple[str, np.ndarray]:
    """(GGUF type name, (out, bytes per row) uint8) of a canonical QuantizedTensor, values and
    scales copied bit for bit."""
    import torch

    kind = gguf_type_of(qt, name)
    q, s = qt.qdata, qt.scale
    if rows_perm is not None:
        q, s = rows_perm(q), rows_perm(s)
    lo, hi = (-128, 127) if kind == "Q8_0" else (-8, 7)
    if q.dtype != torch.int8 or int(q.min()) < lo or int(q.max()) > hi:
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): integer values outside [{lo}, {hi}] "
                        f"cannot be stored as {kind}")
    s16 = s.to(torch.float16)
    if not bool(torch.isfinite(s16).all()) or bool((s16 <= 0).any()):
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): scales must be positive and finite "
                        "in fp16")
    if not torch.equal(s16.float(), s.float()):
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): scales are not fp16 values, so "
                        f"{kind}'s fp16 scale would change the weights")
    d = np.repeat(s16.numpy(), qt.group_size // QK, axis=1)  # (out, in / 32)
    qn = q.numpy()
    return kind, (pack_q8_0(qn, d) if kind == "Q8_0" else pack_q4_0(qn, d))


# ------------------------------------------------------------------------------ tokenizer
@dataclass
class GGUFVocab:
    """The `tokenizer.*` metadata of a byte-level BPE ('gpt2') vocabulary."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None = None
    eos: int | None = None
    add_bos: bool | None = None
    unk: int | None = None
    pad: int | None = None
    chat_template: str | None = None

    def padded(self, vocab_size: int, where: str) -> "GGUFVocab":
        """Pad with <|reserved_N|> control tokens to the embedding's `vocab_size` rows."""
        n = len(self.tokens)
        if n > vocab_size:
            raise EdgeError(f"{where}: the tokenizer has {n} tokens but the embedding only "
                            f"{vocab_size} rows")
        extra = vocab_size - n
        return GGUFVocab(self.tokens + [f"<|reserved_{i}|>" for i in range(extra)],
                         self.types + [TT_CONTROL] * extra, self.merges, self.pre, self.bos,
                         self.eos, self.add_bos, self.unk, self.pad, self.chat_template)

    @classmethod
    def from_fields(cls, fields: dict, source: str) -> "GGUFVocab":
        """From another GGUF's tokenizer metadata (see edge.tokenizer.gguf_tokenizer_fields)."""
        if fields.get("tokenizer.ggml.model") != "gpt2":
            raise EdgeError(f"{source}: the vocabulary must be a 'gpt2' (byte-level BPE) one")
        tokens = list(fields["tokenizer.ggml.tokens"])
        types = list(fields.get("tokenizer.ggml.token_type") or [TT_NORMAL] * len(tokens))
        g = lambda k: fields.get(f"tokenizer.ggml.{k}")  # noqa: E731
        return cls(tokens, types, list(fields["tokenizer.ggml.merges"]), g("pre") or "default",
                   g("bos_token_id"), g("eos_token_id"), g("add_bos_token"),
                   g("unknown_token_id"), g("padding_token_id"),
                   fields.get("tokenizer.chat_template"))

    @classmethod
    def from_tokenizer(cls, tok, chat_template: str | None = None) -> "GGUFVocab":
        """From our Tokenizer (any source: HF files, GGUF metadata, tiktoken)."""
        data = json.loads(tok.to_json())
        model = data.get("model") or {}
        if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("decoder")):
            raise EdgeError(f"{tok.source}: only byte-level BPE tokenizers (Llama 3, SmolLM2, "
                            "GPT-2 style) can be written to GGUF")
        by_id = {i: t for t, i in model["vocab"].items()}
        added = {a["id"]: a for a in data.get("added_tokens", [])}
        n = tok.vocab_size
        tokens, types = [], []
        for i in range(n):
            if i in added:
                tokens.append(added[i]["content"])
                types.append(TT_CONTROL if added[i].get("special") else TT_USER_DEFINED)
            elif i in by_id:
                tokens.append(by_id[i])
                types.append(TT_NORMAL)
            else:  # a hole in the ids: an unused control token keeps the numbering
                tokens.append(f"<|unused_{i}|>")
                types.append(TT_CONTROL)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return cls(tokens, types, merges, _pre_type(tok), tok.bos_id,
                   tok.eos_ids[0] if tok.eos_ids else None, tok.add_bos, tok.unk_id, tok.pad_id,
                   chat_template if chat_template is not None else tok.chat_template)


def _pre_type(tok) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, found by splitting a probe text with
    each candidate and comparing the pieces (equivalent definitions are spelled differently
    in tokenizer.json files)."""
    from edge.tokenizer import _gguf_pre_tokenizer

    ours = tok._hf.pre_tokenizer
    if ours is None:
        raise EdgeError(f"{tok.source}: the tokenizer has no pre-tokenizer; GGUF needs one of "
                        f"llama.cpp's ({', '.join(PRE_TYPES)})")
    want = ours.pre_tokenize_str(_PRE_PROBE)
    for pre in PRE_TYPES:
        if _gguf_pre_tokenizer(pre).pre_tokenize_str(_PRE_PROBE) == want:
            return pre
    raise EdgeError(f"{tok.source}: the tokenizer's pre-tokenizer splits text unlike any of "
                    f"llama.cpp's ({', '.join(PRE_TYPES)}); it cannot be written to GGUF")


# ------------------------------------------------------------------------------ file writer
@dataclass
class PlannedTensor:
    """One tensor of the file: llama.cpp name, logical shape (rows, cols) or (n,), GGUF type
    name, and a function producing its bytes (called once, when the tensor is written)."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    data: Callable[[], np.ndarray]


def rope_freq_factors(cfg: LlamaConfig) -> np.ndarray | None:
    """llama.cpp's `rope_freqs` tensor for llama3 rope scaling: per rotary dimension pair, the
    unscaled inverse frequency divided by the scaled one (llama.cpp divides by it)."""
    if cfg.rope_scaling is None:
        return None
    d = cfg.head_dim
    base = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    return (base / rope_inv_freq(cfg)).astype(np.float32)


def _nbytes(shape, type_name: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return int(np.prod(shape)) // block * size


def write_llama_gguf(dst, cfg: LlamaConfig, vocab: GGUFVocab, tensors: list[PlannedTensor],
                     file_type: str, extra: dict | None = None) -> Path:
    """Write a llama-architecture GGUF atomically (temp file in the same directory + rename).
    Tensors are produced and written one at a time."""
    import gguf

    dst = Path(dst)
    if dst.is_symlink():
        raise EdgeError(f"{dst}: is a symbolic link; refusing to write through it")
    vocab = vocab.padded(cfg.vocab_size, str(dst))
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(cfg.name)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_layers)
        w.add_feed_forward_length(list(cfg.layer_intermediate_sizes)
                                  if cfg.layer_intermediate_sizes else cfg.intermediate_size)
        w.add_head_count(cfg.num_heads)
        w.add_head_count_kv(cfg.num_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        if cfg.rope_scaling is not None:
            w.add_rope_scaling_orig_ctx_len(cfg.rope_scaling.original_max_position_embeddings)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType[file_type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.types)
        w.add_token_merges(vocab.merges)
        for value, add in ((vocab.bos, w.add_bos_token_id), (vocab.eos, w.add_eos_token_id),
                           (vocab.unk, w.add_unk_token_id), (vocab.pad, w.add_pad_token_id)):
            if value is not None:
                add(int(value))
        if vocab.add_bos is not None:
            w.add_add_bos_token(bool(vocab.add_bos))
        if vocab.chat_template:
            w.add_chat_template(vocab.chat_template)
        for key, value in (extra or {}).items():
            w.add_string(key, value)
        for t in tensors:
            raw = gguf.GGMLQuantizationType[t.type_name]
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.type_name),
                              raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tensors:
            arr = np.ascontiguousarray(t.data())
            if arr.nbytes != _nbytes(t.shape, t.type_name):
                raise EdgeError(f"tensor '{t.name}': {arr.nbytes} bytes produced for "
                                f"{t.type_name} {list(t.shape)}")
            w.write_tensor_data(arr)
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


# ------------------------------------------------------------------------------ model -> plan
FLOAT_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _float_bytes(w, type_name: str) -> np.ndarray:
    import torch

    if type_name == "F32":
        return w.detach().float().contiguous().numpy()
    if type_name == "F16":
        return w.detach().to(torch.float16).contiguous().numpy()
    return w.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)


def gguf_plan(model, float_dtype) -> tuple[list[PlannedTensor], dict]:
    """(tensors, summary) of an fp32 LlamaModel whose linears / embedding may be quantized.
    summary: {'types': {GGUF type: count}, 'act_dropped': [module names whose activation
    quantization llama.cpp replaces with its own]}."""
    import gguf
    import torch
    from torch import nn

    from quant.apply import QuantEmbedding, QuantLinear

    from ..loaders.layout import half_to_interleaved

    cfg = model.config
    float_type = FLOAT_TYPES[str(float_dtype).removeprefix("torch.")]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_layers)
    plan: list[PlannedTensor] = []
    summary: dict = {"types": {}, "act_dropped": []}
    factors = rope_freq_factors(cfg)
    if factors is not None:
        plan.append(PlannedTensor("rope_freqs.weight", factors.shape, "F32", lambda: factors))
    hf_names = [k.removesuffix(".weight") for k in cfg.expected_shapes()]
    emb = model.get_submodule("model.embed_tokens")
    head = model.get_submodule("lm_head")
    tied_same = cfg.tie_word_embeddings and (
        getattr(head, "qt", None) is getattr(emb, "qt", None)
        and (getattr(head, "qt", None) is not None or head.weight is emb.weight
             or torch.equal(head.weight, emb.weight)))
    if "lm_head" not in hf_names and not tied_same:
        hf_names.append("lm_head")  # tied in the source but quantized apart: stored separately
    for hf in hf_names:
        m = model.get_submodule(hf)
        name = names.get_name(hf + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise EdgeError(f"no llama.cpp tensor name for {hf}")
        perm = None
        if hf.endswith("q_proj"):
            perm = lambda t: half_to_interleaved(t, cfg.num_heads)  # noqa: E731
        elif hf.endswith("k_proj"):
            perm = lambda t: half_to_interleaved(t, cfg.num_kv_heads)  # noqa: E731
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            kind = gguf_type_of(m.qt, hf)
            if getattr(m, "act", None) is not None:
                summary["act_dropped"].append(hf)
            data = (lambda m=m, hf=hf, perm=perm: pack_quantized(m.qt, hf, perm)[1])
            plan.append(PlannedTensor(name, tuple(m.qt.shape), kind, data))
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            kind = float_type
            w = m.weight
            data = (lambda w=w, perm=perm, kind=kind:
                    _float_bytes(perm(w) if perm else w, kind))
            plan.append(PlannedTensor(name, tuple(w.shape), kind, data))
        else:  # RMSNorm: llama.cpp computes norms in F32
            kind = "F32"
            w = m.weight
            plan.append(PlannedTensor(name, tuple(w.shape), kind,
                                      lambda w=w: w.detach().float().contiguous().numpy()))
        summary["types"][kind] = summary["types"].get(kind, 0) + 1
    return plan, summary


def file_type_of(types: dict) -> str:
    """GGUF general.file_type (a gguf.LlamaFileType name): the type of most large tensors
    (llama.cpp only reports it)."""
    for t in ("Q4_0", "Q8_0", "BF16", "F16"):
        if t in types:
            return f"MOSTLY_{t}"
    return "ALL_F32"


def write_gguf(model, tokenizer, dst, float_dtype, chat_template: str | None = None,
               recipe: str | None = None) -> dict:
    """Write `model` (quantized or not) with `tokenizer` to the GGUF file `dst`; return the
    summary (types per tensor count, modules whose activation quantization llama.cpp does its
    own way)."""
    if tokenizer is None:
        raise EdgeError("the GGUF target needs the model's tokenizer and this checkpoint has "
                        "none; add tokenizer.json to the checkpoint directory")
    plan, summary = gguf_plan(model, float_dtype)
    vocab = GGUFVocab.from_tokenizer(tokenizer, chat_template)
    extra = {"llama_edge.recipe": recipe} if recipe else None
    write_llama_gguf(dst, model.config, vocab, plan, file_type_of(summary["types"]), extra)
    return summary


# ----------------------------------------------------------------------------- the target
NAME = "gguf"
FILE_NAME = "model.gguf"


def check_request(cfg, recipe) -> None:
    if recipe.recipe is not None:
        check_recipe(recipe.recipe)


def stage(st):
    """Pipeline stage lower:gguf."""
    from edge.engines.llamacpp import available

    ck = st.checkpoint
    dest = st.workdir / FILE_NAME
    summary = write_gguf(model_to_lower(st), ck.tokenizer, dest, dtype_for(ck, st.cfg.dtype),
                         chat_template(ck), recipe=st.recipe.label if st.recipe.quantized
                         else None)
    st.artifacts[NAME] = dest
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
    st.report.setdefault("artifacts", {})[NAME] = info
    return st


def artifact_logits(path, max_seq_len: int):
    """llama.cpp's logits (fp32 cache, plain attention) when llama-cpp-python is installed;
    otherwise the file read back by our loader and run on the torch reference."""
    import torch

    from edge.engines.llamacpp import LlamaCppEngine, available

    if available():
        eng = LlamaCppEngine(path, max_context=max_seq_len, threads=torch.get_num_threads(),
                             exact=True)
        sess = eng.session()
        return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()).copy())
    from ..loaders import load_checkpoint
    from ..model import LlamaModel

    art = load_checkpoint(path)
    m = LlamaModel.from_state_dict(art.config, art.tensors, max_seq_len=max_seq_len)
    return lambda w: m(w)[0]


TARGET = Target(NAME, stage, artifact_logits, check_request, from_quantized=True)
