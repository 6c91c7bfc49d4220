"""The ONNX decoder graph of a LlamaModel (see export/targets/onnx/__init__.py for the artifact, the I/O
contract and the weight layouts). Built node by node with onnx.helper; initializers are handed
to a DataFile as they are produced, so only one weight is converted at a time."""

from __future__ import annotations

import numpy as np

from edge.errors import EdgeError

from .weights import ACCURACY_FP32, ACCURACY_INT8, block_params

MS = "com.microsoft"


class GraphBuilder:
    def __init__(self, data):
        self.data = data
        self.nodes = []
        self.ops: dict[str, int] = {}
        self._n = 0
        self._consts: set[str] = set()

    def node(self, op: str, inputs, outputs=None, domain: str = "", name: str | None = None,
             **attrs):
        from onnx import helper

        self._n += 1
        name = name or f"{op}_{self._n}"
        if outputs is None:
            outputs = [f"{name}/out"]
        elif isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name,
                                           domain=domain or None, **attrs))
        self.ops[op] = self.ops.get(op, 0) + 1
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, name: str, arr) -> str:
        """An initializer (added once per name: shared constants such as axes)."""
        if name not in self._consts:
            self._consts.add(name)
            self.data.add(name, np.asarray(arr))
        return name


def _rope_caches(cfg, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin (n, head_dim / 2) float32 of positions 0..n-1 (llama3 scaling included), the
    caches GroupQueryAttention rotates with (rotate-half layout, as the HF Q / K rows)."""
    from edge.config import rope_inv_freq

    ang = np.outer(np.arange(n, dtype=np.float64), rope_inv_freq(cfg))
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class _Lowering:
    """Walks the model's modules and emits the graph."""

    def __init__(self, model, data):
        self.model, self.cfg, self.g = model, model.config, GraphBuilder(data)
        self.weights: dict[str, int] = {}  # kind -> count
        self.int8_act_blocks: set[int] = set()  # MatMulNBits accuracy_level 4 block lengths
        self.act_emulated: set[str] = set()  # activation schemes rounded with standard ops
        self.fq: dict = {}  # (input, scheme) -> its fake-quantized tensor
        self.exact = True
        self.shared: dict[int, tuple] = {}  # id(QuantizedTensor) -> (B name, block, scales...)

    def _count(self, kind: str) -> None:
        self.weights[kind] = self.weights.get(kind, 0) + 1

    # -------------------------------------------------------------- weights
    def _nbits_params(self, name: str, qt):
        if id(qt) in self.shared:
            return self.shared[id(qt)]
        block, packed, scales, zp = block_params(qt, name)
        g = self.g
        b = g.const(f"{name}.qweight", packed)
        s = g.const(f"{name}.scales", scales)
        z = g.const(f"{name}.zero_points", zp) if zp is not None else None
        self.shared[id(qt)] = (b, s, z, block, packed.shape)
        return self.shared[id(qt)]

    def linear(self, x: str, name: str) -> str:
        from torch import nn

        from quant.apply import QuantLinear

        m = self.model.get_submodule(name)
        g = self.g
        if isinstance(m, QuantLinear):
            qt = m.qt
            b, s, z, block, _ = self._nbits_params(name, qt)
            n, k = qt.shape
            acc = ACCURACY_FP32
            if m.act is not None:
                self.exact = False
                if m.act.group_size == block and m.act.symmetric:
                    # The recipe's own rounding (symmetric int8 blocks of this length): what
                    # MatMulNBits' accuracy_level 4 does, with integer dot products.
                    acc = ACCURACY_INT8
                    self.int8_act_blocks.add(block)
                else:
                    x = self.fake_quantize(x, m.act)
            self._count(f"int{qt.bits}" + ("" if qt.zero_point is None else "_asym"))
            inputs = [x, b, s] + ([z] if z else [])
            return g.node("MatMulNBits", inputs, domain=MS, name=f"{name}/MatMulNBits",
                          K=k, N=n, bits=qt.bits, block_size=block, accuracy_level=acc)
        if isinstance(m, nn.Linear):
            self._count("f32")
            w = g.const(f"{name}.weight_t", m.weight.detach().float().t().contiguous().numpy())
            return g.node("MatMul", [x, w], name=f"{name}/MatMul")
        raise EdgeError(f"module '{name}': {type(m).__name__} has no ONNX lowering")

    def fake_quantize(self, x: str, act) -> str:
        """x (B, S, K) rounded as the recipe's DynamicInt8Act does (quant/schemes/activation.py),
        in float with standard ops; shared by the linears reading the same input."""
        from quant.schemes.activation import EPS

        key = (x, act)
        if key in self.fq:
            return self.fq[key]
        g, p = self.g, f"{x}/act_{act.name}"
        c = lambda n, v: g.const(f"act.{n}", np.array(v, np.float32))  # noqa: E731
        axes = g.const("axes_last", np.array([-1], np.int64))
        y = x
        if act.group_size is not None:  # (B, S, K) -> (B, S, K / g, g)
            y = g.node("Reshape", [x, g.const(f"shape_blocks_{act.group_size}", np.array(
                [0, 0, -1, act.group_size], np.int64))], name=f"{p}/blocks")
        if act.symmetric:
            amax = g.node("ReduceMax", [g.node("Abs", [y], name=f"{p}/abs"), axes],
                          name=f"{p}/amax", keepdims=1)
            sc = g.node("Max", [g.node("Div", [amax, c("127", 127.0)], name=f"{p}/div127"),
                                c("eps", EPS)], name=f"{p}/scale")
            q = g.node("Clip", [g.node("Round", [g.node("Div", [y, sc], name=f"{p}/x_s")],
                                       name=f"{p}/round"), c("m127", -127.0), c("127", 127.0)],
                       name=f"{p}/q")
            out = g.node("Mul", [q, sc], name=f"{p}/dq")
        else:
            lo = g.node("Min", [g.node("ReduceMin", [y, axes], name=f"{p}/min", keepdims=1),
                                c("zero", 0.0)], name=f"{p}/lo")
            hi = g.node("Max", [g.node("ReduceMax", [y, axes], name=f"{p}/max", keepdims=1),
                                c("zero", 0.0)], name=f"{p}/hi")
            sc = g.node("Max", [g.node("Div", [g.node("Sub", [hi, lo], name=f"{p}/range"),
                                               c("255", 255.0)], name=f"{p}/div255"),
                                c("eps", EPS)], name=f"{p}/scale")
            zp = g.node("Clip", [g.node("Round", [g.node("Sub", [c("m128", -128.0), g.node(
                "Div", [lo, sc], name=f"{p}/lo_s")], name=f"{p}/zp_f")], name=f"{p}/zp_r"),
                c("m128", -128.0), c("127", 127.0)], name=f"{p}/zp")
            q = g.node("Clip", [g.node("Add", [g.node("Round", [g.node(
                "Div", [y, sc], name=f"{p}/x_s")], name=f"{p}/round"), zp], name=f"{p}/q_z"),
                c("m128", -128.0), c("127", 127.0)], name=f"{p}/q")
            out = g.node("Mul", [g.node("Sub", [q, zp], name=f"{p}/q_minus_z"), sc],
                         name=f"{p}/dq")
        if act.group_size is not None:
            out = g.node("Reshape", [out, g.const("shape_bs_hidden", np.array([0, 0, -1],
                                                                              np.int64))],
                         name=f"{p}/unblocks")
        self.fq[key] = out
        self.act_emulated.add(act.name)
        return out

    def embedding(self, ids: str) -> str:
        from torch import nn

        from quant.apply import QuantEmbedding

        name = "model.embed_tokens"
        m = self.model.get_submodule(name)
        g = self.g
        if isinstance(m, QuantEmbedding):
            qt = m.qt
            b, s, z, block, shape = self._nbits_params(name, qt)
            self._count(f"int{qt.bits}" + ("" if qt.zero_point is None else "_asym"))
            # The MatMulNBits bytes (vocab, K / block, blob) gathered as rows: quantized along
            # the last axis in one block per (row, block) pair, so the scales gain a unit axis.
            s3 = g.node("Unsqueeze", [s, g.const("axes_last", np.array([-1], np.int64))],
                        name=f"{name}/scales3")
            inputs = [b, ids, s3]
            if z is not None:
                raise EdgeError(f"tensor '{name}' ({qt.scheme}): asymmetric embeddings are not "
                                "supported by the ONNX target; use a symmetric scheme for "
                                "model.embed_tokens (e.g. --recipe mobile or int8)")
            rows = g.node("GatherBlockQuantized", inputs, domain=MS,
                          name=f"{name}/GatherBlockQuantized", bits=qt.bits,
                          block_size=block, gather_axis=0, quantize_axis=2)
            # (B, S, K / block, block) -> (B, S, hidden)
            return g.node("Reshape", [rows, g.const("shape_bs_hidden",
                                                    np.array([0, 0, -1], np.int64))],
                          name=f"{name}/Reshape")
        if isinstance(m, nn.Embedding):
            self._count("f32")
            w = g.const(f"{name}.weight", m.weight.detach().float().contiguous().numpy())
            return g.node("Gather", [w, ids], name=f"{name}/Gather", axis=0)
        raise EdgeError(f"module '{name}': {type(m).__name__} has no ONNX lowering")

    def lm_head(self, x: str) -> str:
        import torch
        from torch import nn

        emb = self.model.get_submodule("model.embed_tokens")
        head = self.model.get_submodule("lm_head")
        g = self.g
        tied_float = (type(head) is nn.Linear and type(emb) is nn.Embedding
                      and (head.weight is emb.weight or torch.equal(head.weight, emb.weight)))
        if not tied_float:  # quantized: MatMulNBits (sharing the embedding's bytes when tied)
            return self.linear(x, "lm_head")
        # Tied float weights: the embedding table (vocab, hidden) read transposed by Gemm.
        self._count("f32")
        flat = g.node("Reshape", [x, g.const("shape_rows_hidden",
                                             np.array([-1, self.cfg.hidden_size], np.int64))],
                      name="lm_head/flatten")
        y = g.node("Gemm", [flat, "model.embed_tokens.weight"], name="lm_head/Gemm", transB=1)
        shape = g.node("Concat", [g.node("Shape", ["input_ids"], name="lm_head/ids_shape"),
                                  g.const("vocab_dim", np.array([self.cfg.vocab_size],
                                                                np.int64))],
                       name="lm_head/shape", axis=0)
        return g.node("Reshape", [y, shape], name="lm_head/unflatten")

    def norm_weight(self, name: str) -> str:
        w = self.model.get_submodule(name).weight
        return self.g.const(f"{name}.weight", w.detach().float().contiguous().numpy())

    # -------------------------------------------------------------- graph
    def build(self, max_ctx: int):
        from onnx import TensorProto, helper

        cfg, g = self.cfg, self.g
        eps = float(cfg.rms_norm_eps)
        kv_shape = ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim]
        present_shape = ["batch_size", cfg.num_kv_heads, "total_sequence_length", cfg.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                ["batch_size", "sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["batch_size", "sequence_length",
                                                  cfg.vocab_size])]
        for i in range(cfg.num_layers):
            for kv in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kv}", TensorProto.FLOAT, kv_shape))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kv}", TensorProto.FLOAT, present_shape))
        # GroupQueryAttention's lengths: seqlens_k = tokens in the cache after this step - 1
        # (B,) int32, total_sequence_length = attention_mask's width, a scalar int32.
        total = g.node("ReduceSum", ["attention_mask", g.const("axes_1", np.array([1], np.int64))],
                       name="mask/ReduceSum", keepdims=0)
        seqlens = g.node("Cast", [g.node("Sub", [total, g.const("one_i64", np.array(1, np.int64))],
                                         name="mask/Sub")], name="mask/seqlens_k",
                         to=TensorProto.INT32)
        width = g.node("Gather", [g.node("Shape", ["attention_mask"], name="mask/Shape"),
                                  g.const("index_1", np.array(1, np.int64))],
                       name="mask/width", axis=0)
        total_len = g.node("Cast", [width], name="mask/total_sequence_length",
                           to=TensorProto.INT32)
        cos, sin = _rope_caches(cfg, max_ctx)
        cos, sin = g.const("rope.cos_cache", cos), g.const("rope.sin_cache", sin)

        x = self.embedding("input_ids")
        h = self._first_norm(x, "model.layers.0.input_layernorm", eps)
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}"
            q = self.linear(h, f"{p}.self_attn.q_proj")
            k = self.linear(h, f"{p}.self_attn.k_proj")
            v = self.linear(h, f"{p}.self_attn.v_proj")
            attn, _, _ = g.node("GroupQueryAttention",
                          [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                           seqlens, total_len, cos, sin, "position_ids"],
                          [f"{p}/attn", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                          name=f"{p}/GroupQueryAttention", num_heads=cfg.num_heads,
                          kv_num_heads=cfg.num_kv_heads, do_rotary=1, rotary_interleaved=0)
            o = self.linear(attn, f"{p}.self_attn.o_proj")
            h, _, _, x = g.node("SkipSimplifiedLayerNormalization",
                          [o, x, self.norm_weight(f"{p}.post_attention_layernorm")],
                          [f"{p}/post_norm", "", "", f"{p}/resid_attn"], domain=MS,
                          name=f"{p}/post_attention_layernorm", epsilon=eps)
            gate = self.linear(h, f"{p}.mlp.gate_proj")
            up = self.linear(h, f"{p}.mlp.up_proj")
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate], name=f"{p}/mlp/Sigmoid")],
                         name=f"{p}/mlp/SiLU")
            down = self.linear(g.node("Mul", [act, up], name=f"{p}/mlp/Mul"),
                               f"{p}.mlp.down_proj")
            nxt = (f"model.layers.{i + 1}.input_layernorm" if i + 1 < cfg.num_layers
                   else "model.norm")
            h, _, _, x = g.node("SkipSimplifiedLayerNormalization",
                          [down, x, self.norm_weight(nxt)],
                          [f"{nxt}/out", "", "", f"{p}/resid_mlp"], domain=MS,
                          name=f"{nxt}/SkipSimplifiedLayerNormalization", epsilon=eps)
        g.node("Identity", [self.lm_head(h)], ["logits"], name="logits")
        graph = helper.make_graph(g.nodes, "llama", inputs, outputs,
                                  initializer=self.g.data.tensors)
        return graph

    def _first_norm(self, x: str, name: str, eps: float) -> str:
        """RMSNorm from standard ops (later norms fuse with the residual add)."""
        g = self.g
        sq = g.node("Mul", [x, x], name=f"{name}/square")
        mean = g.node("ReduceMean", [sq, g.const("axes_last", np.array([-1], np.int64))],
                      name=f"{name}/mean", keepdims=1)
        std = g.node("Sqrt", [g.node("Add", [mean, g.const(f"{name}.eps",
                                                            np.array(eps, np.float32))],
                                     name=f"{name}/add_eps")], name=f"{name}/sqrt")
        return g.node("Mul", [g.node("Div", [x, std], name=f"{name}/div"),
                              self.norm_weight(name)], name=f"{name}/scale")


def build_graph(model, data, max_ctx: int):
    """(GraphProto, summary) of `model`; initializers are written to `data` as they come."""
    low = _Lowering(model, data)
    graph = low.build(max_ctx)
    return graph, {"weights": low.weights, "ops": dict(sorted(low.g.ops.items())),
                   "int8_act_blocks": low.int8_act_blocks,
                   "act_emulated": sorted(low.act_emulated), "exact": low.exact}
