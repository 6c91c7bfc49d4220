"""Lower a quantized LlamaModel to static-shape QDQ ONNX graphs for onnxruntime's QNN execution
provider (Qualcomm HTP), simulated on the CPU execution provider.

`--target onnx-qdq` writes OUT/onnx-qdq:

    model_s{CHUNK}.onnx  prompt graph: CHUNK tokens per run (shorter prompts are padded)
    model_s1.onnx        decode graph: one token per run
    model.onnx.data      the weights, shared by both graphs
    tokenizer files, qdq.json (shapes, I/O contract, calibration, activation encodings)

Every shape is fixed (what HTP compilers need): batch 1, S tokens per run, a KV cache of
CACHE positions kept by the caller. Per run (S = CHUNK or 1, C = CACHE):

    inputs   input_ids (1, S) int64, attention_bias (1, 1, S, C + S) float32 (0 or MASK),
             cos / sin (1, 1, S, head_dim) float32 (the caller's rotary tables at the tokens'
             positions), past_key.{i} / past_value.{i} (1, n_kv_heads, C, head_dim)
    outputs  logits (1, S, vocab), new_key.{i} / new_value.{i} (1, n_kv_heads, S, head_dim):
             the caller writes the new rows into its cache at the tokens' positions

Weights are our canonical integer values and scales, unchanged: int4 / int8 initializers stored
(in, out) with DequantizeLinear (block_size = the group along the input axis) feeding MatMul;
the embedding is a Gather of int8 rows times their gathered scales. Activations: every float
tensor the graph computes passes through a QuantizeLinear / DequantizeLinear pair (uint16 by
default, as QNN's a16w4 / a16w8 LLM configurations) whose scale and zero point come from the
min / max observed on the calibration text by running the unquantized-activation graph in
onnxruntime (the same windows the quantize stage calibrates on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.artifact import sha256_file
from edge.errors import EdgeError

from ...model.static import ChunkRunner
from .. import Target
from ..common import chat_template, dir_bytes
from .weights import FIX, INLINE_BYTES, OPSET, DataFile, check_recipe, check_tensor

NAME = "onnx-qdq"
CHUNK = 128  # prompt tokens per run of the prompt graph
DEFAULT_CACHE = 1024  # KV cache positions (the static context)
ACT_BITS = 16  # activation QDQ type: uint16 (uint8 with ACT_BITS = 8)
MASK = -100.0  # attention bias of a masked key: exp(-100) is 0 in float32 softmax, and the
# bias stays in a range 16-bit (and 8-bit) activation encodings resolve
CALIB_WINDOWS = 4  # calibration windows of CHUNK * 2 tokens (two prompt runs each)
QDQ_FILE = "qdq.json"
QDQ_FORMAT, QDQ_VERSION = "llama-edge-onnx-qdq", 1


def check_request(cfg, choice) -> None:
    recipe = choice.recipe
    if choice.is_auto:
        raise EdgeError(f"--target {NAME} takes a fixed recipe, not {choice.text}; "
                        f"{FIX.removeprefix('use a recipe of ')}")
    if recipe is None:
        raise EdgeError(f"--target {NAME} lowers quantized weights (HTP runs integer "
                        f"weights); give a recipe: {FIX.removeprefix('use a recipe of ')}")
    check_recipe(recipe)


# ------------------------------------------------------------------------------ weights
def int4_raw(q: np.ndarray) -> bytes:
    """ONNX INT4 storage: elements in row-major order, two per byte, the first in the low
    nibble (the ONNX spec's packing)."""
    f = q.reshape(-1).astype(np.uint8) & 0x0F
    if f.size % 2:
        f = np.concatenate([f, np.zeros(1, np.uint8)])
    return (f[0::2] | (f[1::2] << 4)).astype(np.uint8)


class _Graph:
    """Static-shape decoder with optional activation QDQ (qparams) or observation (observe)."""

    def __init__(self, model, data, s: int, c: int, qparams: dict | None, observe: bool,
                 weights: dict):
        from .graph import GraphBuilder

        self.model, self.cfg = model, model.config
        self.g = GraphBuilder(data)
        self.s, self.c = s, c
        self.qparams, self.observe, self.observed = qparams, observe, []
        self.weights = weights  # name -> initializer names, shared by both graphs

    def act(self, x: str) -> str:
        """The activation `x` through its QDQ pair (or recorded for calibration)."""
        if self.observe:
            self.observed.append(x)
            return x
        if self.qparams is None:
            return x
        scale, zp = self.qparams[x]
        g = self.g
        dt = np.uint16 if ACT_BITS == 16 else np.uint8
        sc = g.const(f"{x}/q_scale", np.array(scale, np.float32))
        z = g.const(f"{x}/q_zero", np.array(zp, dt))
        q = g.node("QuantizeLinear", [x, sc, z], name=f"{x}/Q")
        return g.node("DequantizeLinear", [q, sc, z], [f"{x}/dq"], name=f"{x}/DQ")

    def _op(self, op, inputs, name, **kw):
        return self.act(self.g.node(op, inputs, name=name, **kw))

    # -------------------------------------------------------------- weights
    def _weight(self, name: str) -> str:
        """Dequantized (in, out) weight of linear `name`."""
        from onnx import TensorProto
        from torch import nn

        from quant.apply import QuantLinear


        m = self.model.get_submodule(name)
        g, data = self.g, self.g.data
        if isinstance(m, QuantLinear):
            qt = m.qt
            check_tensor(qt, name)
            q = qt.qdata.numpy().T  # (in, out)
            if qt.bits == 4:
                kind = TensorProto.INT4 if qt.zero_point is None else TensorProto.UINT4
                data.add_raw(f"{name}.q", lambda: int4_raw(q), kind, q.shape)
            else:
                data.add(f"{name}.q", lambda: q.copy())
            data.add(f"{name}.scale", lambda: qt.scale.numpy().T.copy())  # (in / g, out)
            if qt.zero_point is not None:
                zp = qt.zero_point.numpy().T
                if qt.bits == 4:
                    data.add_raw(f"{name}.zp", lambda: int4_raw(zp), TensorProto.UINT4,
                                 zp.shape)
                else:
                    data.add(f"{name}.zp", lambda: zp.copy())
            self.weights[name] = f"int{qt.bits}" + ("" if qt.zero_point is None else "_asym")
            inputs = [f"{name}.q", f"{name}.scale"] + (
                [f"{name}.zp"] if qt.zero_point is not None else [])
            return g.node("DequantizeLinear", inputs, name=f"{name}/DQ", axis=0,
                          block_size=qt.group_size)
        if isinstance(m, nn.Linear):
            data.add(f"{name}.weight_t",
                     lambda: m.weight.detach().float().t().contiguous().numpy())
            self.weights[name] = "f32"
            return f"{name}.weight_t"
        raise EdgeError(f"module '{name}': {type(m).__name__} has no ONNX lowering")

    def linear(self, x: str, name: str) -> str:
        return self._op("MatMul", [x, self._weight(name)], f"{name}/MatMul")

    def embedding(self) -> str:
        from torch import nn

        from quant.apply import QuantEmbedding

        name, g = "model.embed_tokens", self.g
        m = self.model.get_submodule(name)
        h = self.cfg.hidden_size
        if isinstance(m, QuantEmbedding):
            qt = m.qt
            if qt.zero_point is not None:
                raise EdgeError(f"tensor '{name}' ({qt.scheme}): asymmetric embeddings are not "
                                f"supported by --target {NAME}; use a symmetric scheme")
            g.data.add(f"{name}.q", qt.qdata.numpy)  # (vocab, hidden) int8
            g.data.add(f"{name}.scale", qt.scale.numpy)  # (vocab, hidden / group)
            self.weights[name] = f"int{qt.bits}"
            gs = qt.group_size
            rows = g.node("Cast", [g.node("Gather", [f"{name}.q", "input_ids"],
                                          name=f"{name}/Gather", axis=0)],
                          name=f"{name}/Cast", to=1)
            scales = g.node("Gather", [f"{name}.scale", "input_ids"], name=f"{name}/scales",
                            axis=0)
            shp = g.const("shape_emb_groups", np.array([1, self.s, h // gs, gs], np.int64))
            y = g.node("Mul", [g.node("Reshape", [rows, shp], name=f"{name}/groups"),
                               g.node("Unsqueeze", [scales, g.const("axes_last",
                                                                    np.array([-1], np.int64))],
                                      name=f"{name}/scales4")], name=f"{name}/Mul")
            return self._op("Reshape", [y, g.const("shape_1_s_h", np.array([1, self.s, h],
                                                                           np.int64))],
                            f"{name}/Reshape")
        if isinstance(m, nn.Embedding):
            g.data.add(f"{name}.weight", lambda: m.weight.detach().float().contiguous().numpy())
            self.weights[name] = "f32"
            return self._op("Gather", [f"{name}.weight", "input_ids"], f"{name}/Gather", axis=0)
        raise EdgeError(f"module '{name}': {type(m).__name__} has no ONNX lowering")

    def rmsnorm(self, x: str, name: str) -> str:
        g = self.g
        w = self.model.get_submodule(name).weight
        g.data.add(f"{name}.weight", lambda: w.detach().float().contiguous().numpy())
        eps = g.const(f"{name}.eps", np.array(self.cfg.rms_norm_eps, np.float32))
        ms = self._op("ReduceMean", [self._op("Mul", [x, x], f"{name}/square"),
                                     g.const("axes_last", np.array([-1], np.int64))],
                      f"{name}/mean", keepdims=1)
        inv = self._op("Reciprocal", [self._op("Sqrt", [g.node("Add", [ms, eps],
                                                               name=f"{name}/eps")],
                                                f"{name}/sqrt")], f"{name}/rsqrt")
        y = self._op("Mul", [x, inv], f"{name}/normalize")
        return self._op("Mul", [y, f"{name}.weight"], f"{name}/scale")

    def rope(self, x: str, name: str) -> str:
        """x (1, heads, S, hd) rotated with the caller's cos / sin (rotate-half layout)."""
        g = self.g
        half = self.cfg.head_dim // 2
        a, b = g.node("Split", [x, g.const("split_halves", np.array([half, half], np.int64))],
                      2, name=f"{name}/Split", axis=-1)
        rot = g.node("Concat", [self._op("Neg", [b], f"{name}/Neg"), a], name=f"{name}/Concat",
                     axis=-1)
        return self._op("Add", [self._op("Mul", [x, "cos"], f"{name}/cos"),
                                self._op("Mul", [rot, "sin"], f"{name}/sin")], f"{name}/Add")

    def heads(self, x: str, n: int, name: str) -> str:
        """(1, S, n * hd) -> (1, n, S, hd)."""
        g = self.g
        shp = g.const(f"shape_heads_{n}", np.array([1, self.s, n, self.cfg.head_dim], np.int64))
        return g.node("Transpose", [g.node("Reshape", [x, shp], name=f"{name}/Reshape")],
                      name=f"{name}/Transpose", perm=[0, 2, 1, 3])

    def attention(self, h: str, i: int) -> str:
        cfg, g, s, c = self.cfg, self.g, self.s, self.c
        p = f"model.layers.{i}.self_attn"
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        grp = nh // nkv
        q = self.rope(self.heads(self.linear(h, f"{p}.q_proj"), nh, f"{p}/q"), f"{p}/q_rope")
        k = self.rope(self.heads(self.linear(h, f"{p}.k_proj"), nkv, f"{p}/k"), f"{p}/k_rope")
        v = self.heads(self.linear(h, f"{p}.v_proj"), nkv, f"{p}/v")
        g.node("Identity", [k], [f"new_key.{i}"], name=f"{p}/new_key")
        g.node("Identity", [v], [f"new_value.{i}"], name=f"{p}/new_value")
        keys = g.node("Concat", [self.act(f"past_key.{i}"), k], name=f"{p}/keys", axis=2)
        vals = g.node("Concat", [self.act(f"past_value.{i}"), v], name=f"{p}/values", axis=2)
        # GQA without copies: the query heads of one KV head are stacked along the rows.
        qg = g.node("Reshape", [q, g.const("shape_q_groups", np.array([1, nkv, grp * s, hd],
                                                                       np.int64))],
                    name=f"{p}/q_groups")
        kt = g.node("Transpose", [keys], name=f"{p}/keys_t", perm=[0, 1, 3, 2])
        scores = self._op("Mul", [g.node("MatMul", [qg, kt], name=f"{p}/QK"),
                                  g.const("attn_scale", np.array(hd ** -0.5, np.float32))],
                          f"{p}/scores")
        s5 = g.node("Reshape", [scores, g.const("shape_scores5", np.array(
            [1, nkv, grp, s, c + s], np.int64))], name=f"{p}/scores5")
        masked = self._op("Add", [s5, "attention_bias_5d"], f"{p}/masked")
        probs = self._op("Softmax", [masked], f"{p}/Softmax", axis=-1)
        pg = g.node("Reshape", [probs, g.const("shape_probs", np.array([1, nkv, grp * s, c + s],
                                                                        np.int64))],
                    name=f"{p}/probs")
        y = self._op("MatMul", [pg, vals], f"{p}/PV")  # (1, nkv, grp * S, hd)
        y = g.node("Reshape", [y, g.const("shape_y_heads", np.array([1, nh, s, hd], np.int64))],
                   name=f"{p}/y_heads")
        y = g.node("Reshape", [g.node("Transpose", [y], name=f"{p}/y_t", perm=[0, 2, 1, 3]),
                               g.const("shape_1_s_q", np.array([1, s, nh * hd], np.int64))],
                   name=f"{p}/y")
        return self.linear(y, f"{p}.o_proj")

    def build(self):
        from onnx import TensorProto, helper

        cfg, g, s, c = self.cfg, self.g, self.s, self.c
        kvs = [1, cfg.num_kv_heads, c, cfg.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, s]),
                  helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT,
                                                [1, 1, s, c + s]),
                  helper.make_tensor_value_info("cos", TensorProto.FLOAT, [1, 1, s, cfg.head_dim]),
                  helper.make_tensor_value_info("sin", TensorProto.FLOAT, [1, 1, s, cfg.head_dim])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 [1, s, cfg.vocab_size])]
        for i in range(cfg.num_layers):
            inputs += [helper.make_tensor_value_info(f"past_{kv}.{i}", TensorProto.FLOAT, kvs)
                       for kv in ("key", "value")]
            outputs += [helper.make_tensor_value_info(f"new_{kv}.{i}", TensorProto.FLOAT,
                                                      [1, cfg.num_kv_heads, s, cfg.head_dim])
                        for kv in ("key", "value")]
        bias = self.act("attention_bias")
        g.node("Unsqueeze", [bias, g.const("axes_1", np.array([1], np.int64))],
               ["attention_bias_5d"], name="attention_bias/5d")
        x = self.embedding()
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}"
            a = self.attention(self.rmsnorm(x, f"{p}.input_layernorm"), i)
            x = self._op("Add", [x, a], f"{p}/resid_attn")
            h = self.rmsnorm(x, f"{p}.post_attention_layernorm")
            gate = self.linear(h, f"{p}.mlp.gate_proj")
            up = self.linear(h, f"{p}.mlp.up_proj")
            silu = self._op("Mul", [gate, self._op("Sigmoid", [gate], f"{p}/mlp/Sigmoid")],
                            f"{p}/mlp/SiLU")
            down = self.linear(self._op("Mul", [silu, up], f"{p}/mlp/Mul"),
                               f"{p}.mlp.down_proj")
            x = self._op("Add", [x, down], f"{p}/resid_mlp")
        logits = self.linear(self.rmsnorm(x, "model.norm"), "lm_head")
        g.node("Identity", [logits], ["logits"], name="logits")
        if self.observe:
            outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                        for n in self.observed if n not in ("attention_bias",)
                        and not n.startswith("past_")]
        return helper.make_graph(g.nodes, "llama_static", inputs, outputs,
                                 initializer=g.data.tensors)


class _Sink:
    """Initializers of one graph: small ones inline, large ones written once to the shared
    external data file (a second graph refers to the bytes already written). Values may be
    given as arrays or as functions producing them (called only when written)."""

    def __init__(self, data: DataFile):
        self.data, self.tensors = data, []

    def add(self, name: str, arr) -> str:
        from onnx import numpy_helper


        if name in self.data.written:
            self.tensors.append(self.data.written[name])
            return name
        a = np.ascontiguousarray(arr() if callable(arr) else arr)
        if a.nbytes <= INLINE_BYTES:
            self.tensors.append(numpy_helper.from_array(a, name))
        else:
            self.data.add(name, a)
            self.tensors.append(self.data.written[name])
        return name

    def add_raw(self, name: str, raw, data_type: int, shape) -> str:
        from onnx import helper

        if name not in self.data.written:
            r = np.ascontiguousarray(raw() if callable(raw) else raw)
            if r.nbytes <= 1024:
                self.tensors.append(helper.make_tensor(name, data_type, shape, r.tobytes(),
                                                       raw=True))
                return name
            self.data.add_raw(name, r, data_type, shape)
        self.tensors.append(self.data.written[name])
        return name


def _model_proto(graph):
    from onnx import helper

    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="llama-edge")
    m.ir_version = 10
    return m


def _build(model, data, s, c, qparams=None, observe=False, weights=None):
    gr = _Graph(model, _Sink(data), s, c, qparams, observe, {} if weights is None else weights)
    graph = gr.build()
    if observe:  # the range of every activation, reduced inside the graph (scalars out)
        from onnx import TensorProto, helper

        for x in gr.observed:
            for op in ("ReduceMin", "ReduceMax"):
                out = f"{x}/{op}"
                graph.node.append(helper.make_node(op, [x], [out], name=out, keepdims=0))
                graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
    return graph, gr


def qparams_from_range(lo: float, hi: float, bits: int = ACT_BITS) -> tuple[float, int]:
    """Asymmetric unsigned encoding covering [min(lo, 0), max(hi, 0)] (zero exact)."""
    qmax = (1 << bits) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / qmax, 1e-9)  # a constant-zero tensor keeps a valid scale
    return scale, int(np.clip(round(-lo / scale), 0, qmax))


def ort_chunk_call(path, cfg, s: int, c: int, threads: int | None = None, outputs=()):
    """A ChunkCall (export/model/static.py) over a static graph in onnxruntime's CPU EP: the
    caller's rotary rows and attention bias as inputs, `outputs` (observed activations) as extra
    outputs."""
    import onnxruntime as ort

    from .graph import _rope_caches

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise EdgeError(f"{path}: onnxruntime could not load the model "
                        f"({str(e).splitlines()[0]})") from None
    cos, sin = _rope_caches(cfg, c + s)
    cos = np.concatenate([cos, cos], -1)  # (C + S, head_dim) rotate-half layout
    sin = np.concatenate([sin, sin], -1)
    n = cfg.num_layers
    names = ["logits"] + [f"new_{kv}.{i}" for i in range(n) for kv in ("key", "value")] + \
        list(outputs)

    def call(tokens, positions, mask, keys, values):
        feed = {"input_ids": tokens, "attention_bias": mask[None, None],
                "cos": cos[positions][None, None], "sin": sin[positions][None, None]}
        for i in range(n):
            feed[f"past_key.{i}"], feed[f"past_value.{i}"] = keys[i], values[i]
        out = sess.run(names, feed)
        return (out[0][0], out[1:1 + 2 * n:2], out[2:2 + 2 * n:2], out[1 + 2 * n:])

    return call


def static_runner(path, cfg, s: int, c: int, threads=None, outputs=()) -> ChunkRunner:
    """The graph driven as a device would: the caller keeps a cache of c positions."""
    return ChunkRunner(ort_chunk_call(path, cfg, s, c, threads, outputs), cfg, s, c, MASK)


def calibrate(model, dest: Path, data: DataFile, calib_ids, c: int, threads=None) -> dict:
    """{activation tensor: (scale, zero point)} from min / max over the calibration windows,
    observed in the graph with float activations (its weights written to `data` on the way)."""
    graph, gr = _build(model, data, CHUNK, c, observe=True)
    data.close()
    tmp = dest / ".calibration.onnx"
    try:
        tmp.write_bytes(_model_proto(graph).SerializeToString())
        names = [f"{x}/{op}" for x in gr.observed for op in ("ReduceMin", "ReduceMax")]
        run = static_runner(tmp, model.config, CHUNK, c, threads, outputs=names)
        lo = np.full(len(gr.observed), np.inf)
        hi = np.full(len(gr.observed), -np.inf)
        for row in calib_ids:
            run.reset()
            for i in range(0, len(row), CHUNK):
                r = np.array(run.run(row[i:i + CHUNK])[1], np.float64).reshape(-1, 2)
                lo, hi = np.minimum(lo, r[:, 0]), np.maximum(hi, r[:, 1])
    finally:
        tmp.unlink(missing_ok=True)
    return {x: qparams_from_range(a, b) for x, a, b in zip(gr.observed, lo, hi)}


def write_qdq_into(dest: Path, model, tokenizer, calib_ids, *, cache: int, chat_template=None,
                   recipe=None, threads=None) -> dict:
    """Calibrate and write both static graphs, the tokenizer and qdq.json into `dest`."""
    from edge.engines.onnxruntime import DATA_FILE

    cfg = model.config
    if tokenizer is None:
        raise EdgeError(f"--target {NAME} needs the model's tokenizer and this checkpoint "
                        "has none; add tokenizer.json to the checkpoint directory")
    if not CHUNK <= cache <= cfg.max_position_embeddings:
        raise EdgeError(f"--max-context {cache} is outside {CHUNK}..{cfg.max_position_embeddings}"
                        f" (the static cache of --target {NAME})")
    for n, m in model.named_modules():  # refuse before writing anything
        if hasattr(m, "qt"):
    
            check_tensor(m.qt, n)
    data = DataFile(dest, DATA_FILE)
    try:
        qparams = calibrate(model, dest, data, calib_ids, cache, threads)
    finally:
        if not data.f.closed:
            data.close()
    weights: dict = {}
    graphs = {}
    for s in (CHUNK, 1):
        graph, _ = _build(model, data, s, cache, qparams=qparams, weights=weights)
        name = f"model_s{s}.onnx"
        (dest / name).write_bytes(_model_proto(graph).SerializeToString())
        graphs[name] = s
    import onnx

    for name in graphs:
        onnx.checker.check_model(str(dest / name))
    tokenizer.save(dest, chat_template if chat_template is not None else tokenizer.chat_template)
    kinds: dict[str, int] = {}
    for k in weights.values():
        kinds[k] = kinds.get(k, 0) + 1
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(dest.iterdir()) if p.name != QDQ_FILE}
    eos = sorted(set(cfg.eos_token_ids) | set(tokenizer.eos_ids))
    meta = {"format": QDQ_FORMAT, "version": QDQ_VERSION, "config": cfg.to_hf_dict(),
            "graphs": graphs, "chunk": CHUNK, "cache": cache, "mask": MASK,
            "activations": f"uint{ACT_BITS}", "weights": kinds,
            "calibration": {"windows": int(len(calib_ids)), "tokens": int(np.size(calib_ids))},
            "activation_encodings": len(qparams), "recipe": recipe,
            "tokenizer": {"bos_token_id": tokenizer.bos_id, "eos_token_ids": eos},
            "files": files}
    (dest / QDQ_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def stage(st):
    """Pipeline stage lower:onnx-qdq."""
    from ...evaluate import QUALITY_CTX
    from ...quantize import calibration_ids

    ck = st.checkpoint
    dest = st.workdir / NAME
    dest.mkdir()
    cache = st.cfg.max_context or min(DEFAULT_CACHE, ck.config.max_position_embeddings)
    calib = calibration_ids(ck.tokenizer, st.cfg.calib, CALIB_WINDOWS, 2 * CHUNK)
    meta = write_qdq_into(dest, st.model, ck.tokenizer, calib.tolist(), cache=max(cache, CHUNK),
                          chat_template=chat_template(ck), recipe=st.recipe_record)
    st.artifacts[NAME] = dest
    st.report.setdefault("artifacts", {})[NAME] = {
        "path": NAME, "dtype": "+".join(sorted(meta["weights"])) + f"+a{ACT_BITS}",
        "bytes": dir_bytes(dest), "exact": False,
        "graphs": meta["graphs"], "cache": meta["cache"], "weights": meta["weights"],
        "activations": (f"static uint{ACT_BITS} QuantizeLinear / DequantizeLinear on every "
                        f"activation ({meta['activation_encodings']} encodings from min / max "
                        f"on {meta['calibration']['tokens']} calibration tokens)"),
        "runtime": "onnxruntime CPU EP (QDQ simulation of the QNN HTP graph; compile it on the "
                   "device with onnxruntime's QNN execution provider)",
        "quality_ctx": QUALITY_CTX}
    return st


def artifact_logits(path, max_seq_len: int):
    import torch

    from edge.config import LlamaConfig

    meta = json.loads((Path(path) / QDQ_FILE).read_text())
    cfg = LlamaConfig.from_hf_dict(meta["config"])
    if max_seq_len > meta["cache"]:
        raise EdgeError(f"{path}: {max_seq_len} tokens exceed the static cache of "
                        f"{meta['cache']}")
    run = static_runner(Path(path) / f"model_s{meta['chunk']}.onnx", cfg, meta["chunk"],
                        meta["cache"], torch.get_num_threads())
    return lambda w: torch.from_numpy(run.logits_all(w[0].tolist()))


TARGET = Target(NAME, stage, artifact_logits, check_request)
