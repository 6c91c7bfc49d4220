"""Lower a (possibly quantized) LlamaModel to an ExecuTorch program for Arm CPUs: a `.pte` whose
linears run in the XNNPACK delegate, loadable by ExecuTorch's stock LLM runner (the C++
TextLLMRunner that Android's LlmModule wraps).

The program follows the runner's contract:
  forward(tokens (1, T) int64, input_pos (1,) int64) -> logits of the last token (1, vocab)
with T in 1..max_seq_len (one prompt chunk, or one token when decoding), a KV cache held in the
program's mutable buffers (written by ExecuTorch's `llama::update_cache`, read by its
`llama::custom_sdpa`, which handles grouped-query heads and the causal mask without copies), and
the constant methods the runner reads: get_max_seq_len, get_max_context_len, get_vocab_size,
get_n_layers, get_bos_id, get_eos_ids, use_kv_cache, use_sdpa_with_kv_cache,
enable_dynamic_shape. The directory also holds tokenizer.json (the file the runner reads) and
tokenizer_config.json (chat template, end-of-generation ids) for llama-edge's own engine.

Weights are written in the patterns XNNPACK's partitioners consume, with the integers and
scales our algorithms chose (never re-quantized):
  int4 in groups (symmetric)    -> dequantize_affine(int8 values in [-8, 7], block (1, g)) ->
                                   linear; XNNPACK packs it as block-wise 4-bit with bf16
                                   scales, so those scales must be bf16 values (scale_dtype
                                   "bf16" in the recipe, as `mobile` has)
  int8 / int4 per channel       -> the same with block (1, in): XNNPACK's per-channel kinds
  dynamic int8 activations      -> choose_qparams / quantize / dequantize per token,
                                   asymmetric, once per input tensor (XNNPACK quantizes the
                                   input of such linears per token at run time)
  int8 / int4 embedding         -> quantized_decomposed.embedding_byte / embedding_4bit
                                   (ExecuTorch's quantized kernels, outside the delegate)
  float weights                 -> fp32 linear in XNNPACK
XNNPACK has no weight-only integer linear and no per-block activation quantization; recipes
that ask for them are refused before any work (use --recipe mobile).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import EdgeError
from quant.apply import QuantEmbedding, QuantLinear

from ..model import LlamaModel, Step, remodel, rope_tables, run_layers
from . import Target
from .app_config import write_app_config  # the Android app's llama_edge_app.json
from .common import chat_template, dir_bytes, model_to_lower, resolve_max_context

NAME = "xnnpack"
PTE_NAME = "model.pte"
# Longest prompt chunk one forward call takes (the runner prefills longer prompts in chunks of
# this many tokens) and the default context (KV cache positions) of the program.
MAX_SEQ_LEN = 128
DEFAULT_MAX_CONTEXT = 2048
# Weight-group sizes XNNPACK's block-wise 4-bit kernels take.
XNNPACK_BLOCK_MULTIPLE = 32


# ----------------------------------------------------------------------------- checks
def _refusal(pattern: str, what: str) -> str:
    return (f"target xnnpack: rule '{pattern}' asks for {what}, which XNNPACK does not run; "
            "use --recipe mobile (8-bit per-token activations x 4-bit group weights, 8-bit "
            "embedding and output)")


def _check_config(pattern: str, qc, embedding: bool) -> None:
    from quant.schemes import IntWeight

    w = qc.weight
    if not isinstance(w, IntWeight):
        raise EdgeError(_refusal(pattern, f"{w.name} weights"))
    if not w.symmetric:
        raise EdgeError(_refusal(pattern, f"asymmetric weights ({w.name})"))
    if w.bits not in (4, 8):
        raise EdgeError(_refusal(pattern, f"{w.bits}-bit weights ({w.name})"))
    if embedding:
        return
    if qc.act is None:
        raise EdgeError(_refusal(pattern, f"weight-only {w.name} linears"))
    if qc.act.group_size is not None or qc.act.symmetric:
        raise EdgeError(_refusal(pattern, f"{qc.act.name} activations (XNNPACK quantizes "
                                          "activations per token, asymmetric)"))
    if w.group_size is not None:
        if w.bits != 4:
            raise EdgeError(_refusal(pattern, f"{w.name} weights (8-bit weights are per channel "
                                              "in XNNPACK)"))
        if w.group_size % XNNPACK_BLOCK_MULTIPLE:
            raise EdgeError(_refusal(pattern, f"groups of {w.group_size} (XNNPACK takes "
                                              f"multiples of {XNNPACK_BLOCK_MULTIPLE})"))
        if w.scale_dtype != "bf16":
            raise EdgeError(f"target xnnpack: rule '{pattern}' rounds its {w.name} scales to fp16, "
                            "but XNNPACK's block-wise int4 stores bf16 scales; add \"scale_dtype\": "
                            "\"bf16\" to the rule's weight (as --recipe mobile does)")


def check_request(cfg, choice) -> None:
    """Refuse recipes XNNPACK cannot hold, before any work."""
    if choice.is_auto:
        raise EdgeError(f"target xnnpack takes a fixed recipe (e.g. --recipe mobile), not "
                        f"{choice.text!r}")
    recipe = choice.recipe
    if recipe is None:
        return
    if recipe.kv_cache:
        raise EdgeError("target xnnpack keeps an fp32 KV cache; remove \"kv_cache\" from the "
                        "recipe")
    for rule in recipe.rules:
        if rule.config is not None:
            _check_config(rule.pattern, rule.config, embedding="embed_tokens" in rule.pattern)


# ----------------------------------------------------------------------------- modules
def _quant_ops():
    """torchao's affine quantization ops as registered (torch.ops.torchao.*), the nodes
    XNNPACK's partitioners match for block-wise weights. Called directly rather than through
    their Python wrappers: those run under torch.no_grad(), and each such region becomes a
    grad-mode node that torch.export splits out and inlines again, one whole-graph recompile
    per region (a cost quadratic in the number of linears)."""
    import torchao.quantization.quant_primitives  # noqa: F401 (registers the ops)

    return torch.ops.torchao


class PteLinear(nn.Module):
    """A linear in the form XNNPACK's partitioners take: float, or integer weights behind
    dequantize_affine with an optional per-token dynamic quantization of its input."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.shared: dict = {}  # id(input) -> (input, its quantized form), for one forward call
        if not isinstance(module, QuantLinear):
            self.register_buffer("weight", module.weight.detach().float().contiguous())
            self.qt = None
            return
        qt = module.qt
        if qt.zero_point is not None or not qt.scheme.startswith("int"):
            raise EdgeError(f"tensor '{name}' ({qt.scheme}): XNNPACK takes symmetric integer "
                            "weights; use --recipe mobile")
        if module.act is None or module.act.group_size is not None or module.act.symmetric:
            act = "no" if module.act is None else module.act.name
            raise EdgeError(f"tensor '{name}' ({qt.scheme}, {act} activation quantization): "
                            "XNNPACK runs integer linears with per-token asymmetric int8 "
                            "activations only; use --recipe mobile")
        if qt.bits == 4 and qt.group_size != qt.shape[1]:
            s = qt.scale.to(torch.bfloat16).float()
            if not torch.equal(s, qt.scale):
                raise EdgeError(f"tensor '{name}' ({qt.scheme}): its scales are not bf16 values, "
                                "and XNNPACK's block-wise int4 stores bf16 scales; quantize "
                                "with \"scale_dtype\": \"bf16\" (as --recipe mobile does)")
        self.qt = qt
        self.register_buffer("qdata", qt.qdata.contiguous())
        self.register_buffer("scale", qt.scale.float().contiguous())
        self.register_buffer("zero", torch.zeros(qt.scale.shape, dtype=torch.int8))
        self.block = [1, qt.group_size]
        self.qmin, self.qmax = -(1 << (qt.bits - 1)), (1 << (qt.bits - 1)) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qt is None:
            return F.linear(x, self.weight)
        # The input's per-token quantization: quantized_decomposed's ops, which have shape
        # functions (torchao's affine ops run their whole implementation on every trace of the
        # graph, and a lowering traces each delegated subgraph some twenty times), once per
        # input tensor: q, k and v (gate and up) share one, as XNNPACK then does at run time.
        qd = torch.ops.quantized_decomposed
        hit = self.shared.get(id(x))
        if hit is not None and hit[0] is x:
            x = hit[1]
        else:
            s, z = qd.choose_qparams_per_token_asymmetric(x, torch.int8)
            xq = qd.quantize_per_token(x, s, z, -128, 127, torch.int8)
            xd = qd.dequantize_per_token(xq, s, z, -128, 127, torch.int8, torch.float32)
            self.shared[id(x)] = (x, xd)
            x = xd
        w = _quant_ops().dequantize_affine(self.qdata, self.block, self.scale, self.zero,
                                           torch.int8, self.qmin, self.qmax,
                                           output_dtype=torch.float32)
        return F.linear(x, w)


class PteEmbedding(nn.Module):
    """Embedding rows: fp32, or ExecuTorch's quantized embedding kernels (int8 per row / group,
    int4 in groups, two values per byte) reading our integers and scales."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        if not isinstance(module, QuantEmbedding):
            self.register_buffer("weight", module.weight.detach().float().contiguous())
            self.bits = 0
            return
        qt = module.qt
        if qt.zero_point is not None or not qt.scheme.startswith("int"):
            raise EdgeError(f"tensor '{name}' ({qt.scheme}): ExecuTorch's quantized embedding "
                            "takes symmetric integer rows; use --recipe mobile")
        self.bits = qt.bits
        q = qt.qdata
        if qt.bits == 4:  # (v0 + 8) << 4 | (v1 + 8): the kernel's packing of two values a byte
            u = (q.to(torch.int16) + 8).to(torch.uint8)
            q = (u[:, 0::2] << 4) | u[:, 1::2]
        self.register_buffer("qdata", q.contiguous())
        scale = qt.scale.float()
        self.register_buffer("scale", scale.squeeze(1) if scale.shape[1] == 1 else scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.bits == 0:
            return F.embedding(ids, self.weight)
        op = (torch.ops.quantized_decomposed.embedding_byte if self.bits == 8 else
              torch.ops.quantized_decomposed.embedding_4bit)
        lo, hi = (-128, 127) if self.bits == 8 else (-8, 7)
        return op.dtype(self.qdata, self.scale, None, lo, hi, ids, dtype=torch.float32)


class RunnerAttention(nn.Module):
    """Attention core of the runner's program: the KV cache in the program's mutable buffers,
    written by ExecuTorch's update_cache and read by its custom_sdpa (grouped-query heads and
    the causal mask without copies)."""

    def __init__(self, cfg, max_context: int):
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        shape = (1, max_context, cfg.num_kv_heads, cfg.head_dim)  # the custom ops' layout
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def forward(self, q, k, v, step: Step):
        b, t = q.shape[:2]  # q: (B, T, heads, head_dim); k, v: (B, T, n_kv, head_dim)
        torch.ops.llama.update_cache(k, self.k_cache, step.pos)
        torch.ops.llama.update_cache(v, self.v_cache, step.pos)
        y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, step.pos, None, 0.0, True)
        return y.reshape(b, t, self.n_heads * self.head_dim)


class RunnerProgram(nn.Module):
    """The runner's forward(tokens, input_pos) over our model: a copy of its module tree
    (no weight copies) with XNNPACK's linear and embedding forms and the runner's attention."""

    def __init__(self, model: LlamaModel, max_context: int):
        super().__init__()
        cfg = model.config
        self.max_context = max_context

        def swap(name, m):
            if name.endswith("self_attn.core"):
                return RunnerAttention(cfg, max_context)
            if isinstance(m, (nn.Linear, QuantLinear)):
                return PteLinear(m, name)
            if isinstance(m, (nn.Embedding, QuantEmbedding)):
                return PteEmbedding(m, name)
            return None

        program = remodel(model, swap)
        self.shared = {}  # the linears' quantized inputs, shared (see PteLinear.forward)
        for m in program.modules():
            if isinstance(m, PteLinear):
                m.shared = self.shared
        self.model, self.lm_head = program.model, program.lm_head
        cos, sin = rope_tables(cfg, max_context)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_context, head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self.shared.clear()
        t = tokens.shape[1]
        pos = input_pos[0].item()
        torch._check(pos >= 0)
        torch._check(pos + t <= self.max_context)
        x = self.model.embed_tokens(tokens)
        cos = self.rope_cos.narrow(0, pos, t).view(1, t, 1, -1)
        sin = self.rope_sin.narrow(0, pos, t).view(1, t, 1, -1)
        x = run_layers(self.model.layers, x, Step(pos, cos, sin))
        return self.lm_head(self.model.norm(x[:, -1, :]))


# ----------------------------------------------------------------------------- lowering
def runner_metadata(model: LlamaModel, tokenizer, max_context: int, max_seq_len: int) -> dict:
    """The constant methods ExecuTorch's LLM runner reads."""
    cfg = model.config
    eos = sorted(set(cfg.eos_token_ids) | set(tokenizer.eos_ids if tokenizer else ()))
    bos = tokenizer.bos_id if tokenizer is not None and tokenizer.bos_id is not None else \
        cfg.bos_token_id
    meta = {"get_max_seq_len": max_seq_len, "get_max_context_len": max_context,
            "get_vocab_size": cfg.vocab_size, "get_n_layers": cfg.num_layers,
            "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True,
            "get_eos_ids": eos}
    if bos is not None:
        meta["get_bos_id"] = int(bos)
    return meta


def lower_to_pte(model: LlamaModel, tokenizer, max_context: int, path: Path,
                 max_seq_len: int = MAX_SEQ_LEN, step=None, shortcuts: bool = True) -> dict:
    """Write the .pte of `model` (fp32 activations, XNNPACK-delegated linears) to `path`,
    streamed from the serialized pieces (no contiguous copy of the program in memory); returns
    how much of it runs in XNNPACK (delegated_share). shortcuts=False lowers without
    _lowering_shortcuts (the same bytes, slower)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 (registers ops)
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401

    with warnings.catch_warnings():
        for category, message in LOWERING_NOTICES:
            warnings.filterwarnings("ignore", message, category)
        return _lower(model, tokenizer, max_context, path, max_seq_len,
                      step or (lambda what: None), shortcuts)


# What torch.export and ExecuTorch's passes warn about on every lowering of this graph: their
# own deprecations (FutureWarning) and the KV cache buffers that forward mutates (they are meant
# to start empty). Not actionable for someone exporting a model.
LOWERING_NOTICES = ((FutureWarning, ""), (UserWarning, "Mutation on a buffer"))


# The steps of a lowering, as reported to `step` when each one starts, and each one's share of
# the lowering's time in percent (SmolLM2's 30 layers: 6, 69, 15 and 0.6 s of 91), by which the
# stage's bar advances so that its estimate of the time left holds from the first step on.
LOWER_STEPS = ("torch.export", "partition (XNNPACK)", "to_executorch", "serialize")
LOWER_SHARES = (7, 76, 16, 1)


def lowering_progress(bar):
    """step(name) for lower_to_pte that advances `bar` (of sum(LOWER_SHARES) units) by the share
    of each step done and names the step under way."""
    def step(what):
        bar.update(sum(LOWER_SHARES[:LOWER_STEPS.index(what)]) - bar.n)
        bar.set_postfix_str(what)

    return step


def runner_partitioner():
    """One XNNPACK partitioner that delegates what ExecuTorch's usual pair does (the dynamically
    quantized linears first, each group on its own, then the float and other operators in
    merged groups) in a single pass over the graph. Each partitioner given to
    to_edge_transform_and_lower costs two more decompositions of the whole program, which are
    most of a lowering's time."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner)
    from executorch.exir.backend.canonical_partitioners.config_partitioner import (
        DSJ, format_target_name, is_constant_data)
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
        generate_grouped_partitions_from_list_of_nodes)
    from executorch.exir.backend.compile_spec_schema import CompileSpec
    from executorch.exir.backend.partitioner import DelegationSpec

    # XNNPACK preprocesses partitions with this spec with its linear pass only.
    linear_spec = DelegationSpec("XnnpackBackend", [CompileSpec("dqlinear_partitioner", b"")])

    class RunnerPartitioner(XnnpackPartitioner):
        def __init__(self):
            super().__init__()  # every config at every precision: the ops kept from decomposition
            self.dynamic = XnnpackDynamicallyQuantizedPartitioner()

        def ops_to_not_decompose(self, ep):
            """The operators XNNPACK takes whole (linear, torchao's quantization ops), kept when
            every use of them in the program is one it takes, and no per-node check: ExecuTorch
            then decomposes the rest of the program once instead of twice."""
            ops, supported = super().ops_to_not_decompose(ep)
            uses: dict = {}
            for node in ep.graph_module.graph.nodes:
                if node.op == "call_function" and node.target in ops:
                    uses[node.target] = uses.get(node.target, True) and supported(node)
            return [op for op in ops if uses.get(op, True)], None

        def generate_partitions(self, ep):
            first = self.dynamic.generate_partitions(ep)
            taken = {n for p in first for n in p.nodes}
            rest = generate_grouped_partitions_from_list_of_nodes(
                ep.graph_module, self._groups(ep, taken))
            for i, p in enumerate(first + rest):
                p.id = i
            self.linear_tags = {f"tag{p.id}" for p in first}
            return first + rest

        def partition(self, ep):
            result = super().partition(ep)
            for tag in self.linear_tags:
                result.partition_tags[tag] = linear_spec
            return result

        def _groups(self, ep, taken):
            """Connected groups of the nodes the configs take (a node with the nodes it needs),
            leaving out `taken`: the graph as the second partitioner of the pair sees it."""
            dsj = DSJ()
            for node in ep.graph_module.graph.nodes:
                if node.op != "call_function" or node in taken:
                    continue
                config = self.target_partitioner_configs.get(
                    format_target_name(node.target.__name__))
                if config is None or not config.check_constraints(node, ep):
                    continue
                group = [n for n in config.get_partition(node, ep)
                         if not (is_constant_data(ep, n) and dsj.contains(n))]
                if not group or taken.intersection(group):
                    continue
                for n in group:
                    dsj.union(n, group[0])
            return dsj.gen_groups()

    return RunnerPartitioner()


_stale: dict = {}  # graph modules reordered by _legalize_in_place, code not yet regenerated


def _legalize_in_place(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """torch.fx's legalize_graph (the topological order ExecuTorch restores after moving each
    partition into its own submodule): the same order from the same queue discipline, with the
    graph's nodes relinked in place instead of copied into a new graph, and the module's Python
    code regenerated once when the partition step ends (_lowering_shortcuts) instead of after
    every partition. ExecuTorch calls it once per partition on the whole program; regenerating
    the whole program's code each time made the step quadratic (70 s of SmolLM2's lowering).
    The programs are byte for byte the same."""
    import collections
    import operator

    first = (operator.add, operator.mul, operator.sub, operator.floordiv, operator.truediv,
             operator.mod, operator.le, operator.lt, operator.ge, operator.gt, operator.eq,
             operator.ne, torch.ops.aten.sym_constrain_range.default,
             torch.ops.aten.sym_constrain_range_for_size.default,
             torch.ops.aten._assert_async.msg, torch.ops.aten.scalar_tensor.default,
             torch.ops.aten._assert_scalar.default)
    nodes = list(gm.graph.nodes)
    indeg = dict.fromkeys(nodes, 0)
    for node in nodes:
        for user in node.users:
            indeg[user] += 1
    queue = collections.deque(n for n in nodes if indeg[n] == 0)
    order = []
    while queue:
        cur = queue.popleft()
        order.append(cur)
        for user in cur.users:
            indeg[user] -= 1
            if indeg[user] == 0:
                if user.op == "call_function" and user.target in first:
                    queue.appendleft(user)
                else:
                    queue.append(user)
    if len(order) < len(nodes):
        raise RuntimeError("the partitioned program has a cycle: "
                           f"{[n for n in nodes if indeg[n] != 0][:5]}")
    if order != nodes:
        prev = order[0]
        if nodes[0] is not prev:
            nodes[0].prepend(prev)
        for node in order[1:]:
            if prev.next is not node:
                prev.append(node)
            prev = node
    _stale.setdefault(id(gm), gm)
    return gm


# Operators of the float partitions of the runner's program (RMSNorm's steps, the rotary
# embedding, SiLU times up, residual adds) on which none of XNNPACK's graph passes acts: they
# rewrite convolutions, batch norms, pads, upsampling, concatenations of more than five inputs,
# clones and copies, activations following a convolution or linear, matmul and SDPA patterns,
# quantize / dequantize pairs, and fold operators whose inputs are all constants.
PASSLESS_OPS = frozenset({"aten.add.Tensor", "aten.mul.Tensor", "aten.pow.Tensor_Scalar",
                          "aten.rsqrt.default", "aten.neg.default", "aten.sigmoid.default",
                          "aten.cat.default"})
MAX_PASSLESS_CAT = 5  # inputs of a concatenation XNNPACK takes whole


def _passless(ep) -> bool:
    """Whether XNNPACK's graph passes leave a partition as it is: every operator in
    PASSLESS_OPS, no concatenation longer than XNNPACK takes whole, and every operator with an
    input computed at run time (so nothing to fold into a constant)."""
    constant = set(ep.graph_signature.inputs_to_parameters) | \
        set(ep.graph_signature.inputs_to_buffers) | \
        set(ep.graph_signature.inputs_to_lifted_tensor_constants)
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", None)
        if name not in PASSLESS_OPS:
            return False
        if name == "aten.cat.default" and len(node.args[0]) > MAX_PASSLESS_CAT:
            return False
        if all(n.op == "placeholder" and n.name in constant for n in node.all_input_nodes):
            return False
    return True


@contextlib.contextmanager
def _lowering_shortcuts():
    """ExecuTorch's lowering with two shortcuts that leave the program byte for byte the same
    (tested): _legalize_in_place as its topological sort, and no XNNPACK graph passes on the
    partitions they would leave unchanged (_passless). Each of those passes retraces the
    partition with fake tensors; the float partitions (seven a layer) went through seventeen
    of them, most of a 30-layer lowering's delegate preprocessing."""
    import executorch.backends.xnnpack.xnnpack_preprocess as xp
    import executorch.exir.lowered_backend_module as lbm

    base = xp.XNNPACKPassManager

    class PassManager(base):
        def __init__(self, exported_program, passes=None):
            super().__init__(exported_program, passes)
            if _passless(exported_program):
                self.passes = []

    saved = lbm.legalize_graph
    lbm.legalize_graph = _legalize_in_place
    xp.XNNPACKPassManager = PassManager
    try:
        yield
    finally:
        lbm.legalize_graph = saved
        xp.XNNPACKPassManager = base
        for gm in _stale.values():
            gm.recompile()
        _stale.clear()


def _lower(model, tokenizer, max_context, path, max_seq_len, step, shortcuts=True) -> dict:
    from executorch.exir import (EdgeCompileConfig, ExecutorchBackendConfig,
                                 to_edge_transform_and_lower)
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    max_seq_len = min(max_seq_len, max_context)
    pte = RunnerProgram(model, max_context).eval()
    tokens = torch.zeros((1, min(2, max_seq_len)), dtype=torch.long)
    pos = torch.tensor([0], dtype=torch.long)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    step(LOWER_STEPS[0])
    with torch.no_grad():
        ep = torch.export.export(pte, (tokens, pos), dynamic_shapes=({1: seq}, None),
                                 strict=False)
    del pte
    step(LOWER_STEPS[1])
    with _lowering_shortcuts() if shortcuts else contextlib.nullcontext():
        edge = to_edge_transform_and_lower(
            ep, partitioner=[runner_partitioner()],
            constant_methods=runner_metadata(model, tokenizer, max_context, max_seq_len),
            compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True))
    del ep
    step(LOWER_STEPS[2])
    prog = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    del edge
    step(LOWER_STEPS[3])
    with open(path, "wb") as f:
        prog.write_to_file(f)
    share = delegated_share(prog.executorch_program)
    del prog
    drop_lowering_references()
    return share


def drop_lowering_references() -> None:
    """Lowering leaves references to the graphs it saw in process-wide places: torch's
    fake-tensor dispatch caches (class-wide and per shape environment), lru_caches of modules
    and classes (keyed by graph nodes, shape environments) and the partitioners' module-level
    "why not partitioned" notes. Through the graphs they keep every weight of the program (a 1B
    model's 1.4 GB) alive for the rest of the export: clear them (they are caches; the next
    lowering refills them)."""
    import functools
    import gc
    import sys
    import types

    from executorch.exir.backend.utils import WhyNoPartition
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # Types only (never isinstance, attribute access or truth tests): objects met here include
    # dead weak proxies and classes whose attribute access has side effects.
    def clear(v):
        t = type(v)
        if issubclass(t, (staticmethod, classmethod)):
            v, t = v.__func__, type(v.__func__)
        if issubclass(t, WhyNoPartition):
            v.node = None
        elif issubclass(t, functools._lru_cache_wrapper) or (
                t is types.FunctionType and callable(vars(v).get("cache_clear"))):
            v.cache_clear()

    FakeTensorMode.cache_clear()
    # Symbolic shapes live on in C++ (sizes of fake tensors), and with them their shape
    # environment's own fake-tensor dispatch cache.
    for o in gc.get_objects():
        if issubclass(type(o), ShapeEnv):
            o.fake_tensor_cache.clear()
    for name, mod in list(sys.modules.items()):
        if type(mod) is not types.ModuleType or not name.startswith(("executorch.", "torch.")):
            continue
        for v in list(vars(mod).values()):
            clear(v)
            if issubclass(type(v), type) and vars(v).get("__module__") == name:
                for a in list(vars(v).values()):
                    clear(a)


def delegated_share(program) -> dict:
    """How much of a program (executorch's Program) runs in XNNPACK: counts of delegate calls
    and other kernels."""
    plan = program.execution_plan[0]
    ops = [plan.operators[i.instr_args.op_index].name for i in plan.chains[0].instructions
           if hasattr(i.instr_args, "op_index")]
    delegates = sum(1 for i in plan.chains[0].instructions
                    if type(i.instr_args).__name__ == "DelegateCall")
    counts: dict[str, int] = {}
    for o in ops:
        counts[o] = counts.get(o, 0) + 1
    return {"delegate_calls": delegates, "other_kernels": counts}


def write_xnnpack(model: LlamaModel, tokenizer, dest: Path, max_context: int,
                  chat_template: str | None = None, recipe: str = "none", step=None) -> dict:
    """Write dest/ (model.pte, tokenizer.json, tokenizer_config.json, llama_edge.json,
    llama_edge_app.json); returns a summary. step(name) is called as each of LOWER_STEPS
    starts."""
    from edge.chat import detect_chat_format
    from edge.engines.executorch import write_sidecar

    if tokenizer is None:
        raise EdgeError("target xnnpack ships the tokenizer file ExecuTorch's runner reads, and "
                        "this checkpoint has none; add tokenizer.json to the checkpoint directory")
    dest.mkdir(parents=True, exist_ok=True)  # inside the export's atomic work directory
    share = lower_to_pte(model, tokenizer, max_context, dest / PTE_NAME, step=step)
    tokenizer.save(dest, chat_template)
    write_sidecar(dest / PTE_NAME, {"name": model.config.name or "llama", "recipe": recipe,
                                    "chat_format": detect_chat_format(tokenizer)})
    write_app_config(dest, tokenizer, model.config, max_context, chat_template)
    return {"bytes": (dest / PTE_NAME).stat().st_size, **share}


def stage(st):
    """Pipeline stage lower:xnnpack."""
    ck = st.checkpoint
    model = model_to_lower(st)
    max_ctx = resolve_max_context(st.cfg.max_context, ck.config, DEFAULT_MAX_CONTEXT)
    dest = st.workdir / NAME
    from ..pipeline.progress import stage_bar

    with stage_bar("lower:xnnpack", sum(LOWER_SHARES), "%") as bar:
        summary = write_xnnpack(model, ck.tokenizer, dest, max_ctx, chat_template(ck),
                                st.recipe.label, step=lowering_progress(bar))
    quantized = any(isinstance(m, QuantLinear) for m in model.modules())
    kinds = sorted({m.qt.scheme for m in model.modules()
                    if isinstance(m, (QuantLinear, QuantEmbedding))} or {"f32"})
    info = {"path": f"{NAME}/{PTE_NAME}", "dtype": "+".join(kinds),
            "bytes": dir_bytes(dest), "pte_bytes": summary["bytes"], "max_context": max_ctx, "max_seq_len":
            min(MAX_SEQ_LEN, max_ctx), "delegate_calls": summary["delegate_calls"],
            "other_kernels": summary["other_kernels"],
            # XNNPACK quantizes activations itself (per token, its own rounding of the scale
            # and zero point) and sums in its own order: close to the reference, not equal.
            "exact": False, "runtime": "executorch (XNNPACK)"}
    if quantized:
        info["activations"] = "XNNPACK's own per-token asymmetric int8 quantization"
    st.artifacts[NAME] = dest / PTE_NAME
    st.report.setdefault("artifacts", {})[NAME] = info
    return st


def artifact_logits(path: Path, max_seq_len: int):
    """(1, n) ids -> (n, vocab) logits from the program in ExecuTorch's runtime, one token per
    forward call (the program returns the last token's logits)."""
    from edge.engines.executorch import ExecuTorchEngine

    eng = ExecuTorchEngine(path, max_context=None)
    sess = eng.session()
    return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))



TARGET = Target(NAME, stage, artifact_logits, check_request, from_quantized=True)
