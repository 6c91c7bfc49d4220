"""An edge artifact laid out for the standalone bench program (edge/csrc/tools/bench_main.cpp),
which runs on boards without Python (Android phones over adb, minimal images): the same kernels
and forward pass as the Python runtime, fed from one memory-mapped file that needs no JSON,
safetensors or tokenizer reading on the board.

    "LEBENCH1"                 magic
    u64 header bytes           then the header, UTF-8 text:
        key=value lines        hidden, layers, heads, kv_heads, head_dim, vocab, eps (as
                               float.hex), rope_ctx, artifact_sha256, model_type, recipe,
                               model_size, n_params, bench_seed
        "tensor" lines         tensor NAME KIND N K GROUP ACT then four OFFSET:BYTES pairs (data,
                               scale, zero points, row sums; 0:0 when absent)
    the data section, from the first 64-byte boundary after the header: the arrays, each at a
    64-byte aligned OFFSET from the section's start

Tensors: model.embed_tokens, lm_head, model.norm, rope.cos / rope.sin (rope_ctx x head_dim/2, the
Python engine's tables), model.layers.I.{input_layernorm, post_attention_layernorm} and the seven
linears of each layer, and bench.ids0 / bench.ids1: the token ids `llama-edge bench` draws (its
seeded generator), so both programs time the same tokens."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifact import ACT_INT8, ACT_INT8_BLOCKS, load_artifact
from .bench import BENCH_SEED, artifact_digest, prompt_ids
from .engines import model_bytes
from .errors import EdgeError
from .packing import KINDS

MAGIC = b"LEBENCH1"
ALIGN = 64
ACT_CODES = {None: 0, ACT_INT8: 1, ACT_INT8_BLOCKS: 2}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def write_bundle(artifact, out) -> Path:
    """The bench bundle of an edge artifact directory, written atomically to `out`."""
    from .engines.native import rope_tables

    art = load_artifact(str(artifact), True, "mapped")
    c = art.config
    rope_ctx = art.max_context
    cos, sin = rope_tables(c, rope_ctx)
    w, acts = art.weights, art.acts
    blobs: list[tuple[int, np.ndarray]] = []  # (offset in the data section, array)
    seen: dict[tuple[int, int], str] = {}  # (address, bytes) -> place: a tied weight is stored once
    end = 0
    lines: list[str] = []

    def blob(a) -> str:
        nonlocal end
        if a is None:
            return "0:0"
        a = np.ascontiguousarray(a)
        key = (a.__array_interface__["data"][0], a.nbytes)
        if key not in seen:
            seen[key] = f"{end}:{a.nbytes}"
            blobs.append((end, a))
            end = _align(end + a.nbytes)
        return seen[key]

    def packed(name: str, act=None) -> None:
        p = w[name]
        lines.append(f"tensor {name} {KINDS[p.kind]} {p.shape[0]} {p.shape[1]} {p.group} "
                     f"{ACT_CODES[act]} {blob(p.data)} {blob(p.scale)} {blob(p.zp)} "
                     f"{blob(p.rowsum)}")

    def floats(name: str, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=np.float32)
        lines.append(f"tensor {name} 0 {a.shape[0] if a.ndim > 1 else 1} {a.shape[-1]} 0 0 "
                     f"{blob(a)} 0:0 0:0 0:0")

    packed("model.embed_tokens")
    packed("lm_head", acts["lm_head"])
    floats("model.norm", w["model.norm"].data)
    floats("rope.cos", cos)
    floats("rope.sin", sin)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        floats(p + "input_layernorm", w[p + "input_layernorm"].data)
        floats(p + "post_attention_layernorm", w[p + "post_attention_layernorm"].data)
        for lin in LINEARS:
            packed(p + lin, acts[p + lin])
    for k, seed in (("bench.ids0", BENCH_SEED), ("bench.ids1", BENCH_SEED + 1)):
        ids = np.asarray(prompt_ids(rope_ctx + 1, c.vocab_size, seed), dtype=np.int32)
        lines.append(f"tensor {k} 0 1 {len(ids)} 0 0 {blob(ids)} 0:0 0:0 0:0")
    meta = {"hidden": c.hidden_size, "layers": c.num_layers, "heads": c.num_heads,
            "kv_heads": c.num_kv_heads, "head_dim": c.head_dim, "vocab": c.vocab_size,
            "eps": float(c.rms_norm_eps).hex(), "rope_ctx": rope_ctx,
            "artifact_sha256": artifact_digest(str(artifact)),
            "model_type": f"{c.name} {art.recipe_name}", "recipe": art.recipe_name,
            "model_size": model_bytes(str(artifact)),
            "n_params": c.num_parameters(), "bench_seed": BENCH_SEED}
    raw = ("".join(f"{k}={v}\n" for k, v in meta.items())
           + "".join(line + "\n" for line in lines)).encode()
    data = _align(len(MAGIC) + 8 + len(raw))
    out = Path(out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(raw).to_bytes(8, "little") + raw)
            for off, a in blobs:
                f.write(b"\0" * (data + off - f.tell()))
                f.write(a.tobytes())
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EdgeError(f"{out}: cannot write the bench bundle ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
