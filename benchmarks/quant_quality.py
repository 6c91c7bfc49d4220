"""Quantization quality side by side: our schemes and algorithms vs llama.cpp's quantization
types on the same weights and the same text.

The reference is the unquantized model (for SmolLM2: its GGUF weights dequantized to fp32).
llama.cpp's files are made from that same GGUF by llama.cpp's own quantizer
(requantization allowed), and scored with llama.cpp's logits against our fp32 reference.
Every number is computed the same way (quant/eval.py): text tokenized without BOS,
non-overlapping windows of --ctx tokens, every position after the first scored.

    python benchmarks/quant_quality.py --text FILE [--configs a,b,...] [--llama-cpp Q8_0,Q4_0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.evaluate import read_text  # noqa: E402
from export.loaders import load_checkpoint, resolve_model  # noqa: E402
from export.model import LlamaModel  # noqa: E402
from export.quantize import quantized_model  # noqa: E402
from make_gguf import requantize  # noqa: E402
from quant.eval import windows  # noqa: E402
from quant.recipes import QuantConfig, Recipe, Rule, load_recipe  # noqa: E402
from quant.schemes import DynamicInt8Act, FP8Weight, IntWeight  # noqa: E402

L = "model.layers.*"
E8 = QuantConfig(IntWeight(8, None))


def _r(name, lin: QuantConfig, emb: QuantConfig | None = E8) -> Recipe:
    return Recipe(name, (Rule("model.embed_tokens", emb), Rule("lm_head", emb), Rule(L, lin)))


def configs() -> dict[str, Recipe]:
    i4 = IntWeight(4, 32, True)
    act = DynamicInt8Act()
    c = {
        "int8_pc": Recipe("int8_pc", (Rule("*", QuantConfig(IntWeight(8, None))),)),
        "int8_g32": Recipe("int8_g32", (Rule("*", QuantConfig(IntWeight(8, 32))),)),
        "int8_g32_gptq": Recipe("int8_g32_gptq", (
            Rule("model.embed_tokens", QuantConfig(IntWeight(8, 32))),
            Rule("lm_head", QuantConfig(IntWeight(8, 32))),
            Rule(L, QuantConfig(IntWeight(8, 32), algorithm="gptq")))),
        "fp8_pc": Recipe("fp8_pc", (Rule("*", QuantConfig(FP8Weight(None))),)),
        "fp8_g32": Recipe("fp8_g32", (Rule("*", QuantConfig(FP8Weight(32))),)),
        "int4_g32_rtn": _r("int4_g32_rtn", QuantConfig(i4)),
        "int4_g32_gptq": _r("int4_g32_gptq", QuantConfig(i4, algorithm="gptq")),
        "int4_g32_awq": _r("int4_g32_awq", QuantConfig(i4, algorithm="awq")),
        "int4_g32_awq+gptq": _r("int4_g32_awq+gptq", QuantConfig(i4, algorithm="awq+gptq")),
        "int4_g32_all_rtn": _r("int4_g32_all_rtn", QuantConfig(i4), QuantConfig(i4)),
        "int4_g32_all_awq": _r("int4_g32_all_awq", QuantConfig(i4, algorithm="awq"),
                               QuantConfig(i4)),
        "8da4w_g32_rtn": _r("8da4w_g32_rtn", QuantConfig(i4, act)),
        "8da4w_g32_gptq": _r("8da4w_g32_gptq", QuantConfig(i4, act, "gptq")),
    }
    for p in ("mobile", "8da4w", "int4-g128", "int8", "fp8"):
        c[f"preset:{p}"] = load_recipe(p)
    return c


class RefCache:
    """Reference log-probs per window, computed once and reused for every configuration."""

    def __init__(self, model, wins):
        self.wins = wins
        with torch.inference_mode():
            self.logp = [torch.log_softmax(model(w[None])[0].float()[:-1], -1) for w in wins]


def score(logits_fn, ref: RefCache) -> dict:
    nll = rnll = 0.0
    klds, agree, n = [], 0, 0
    with torch.inference_mode():
        for w, lr in zip(ref.wins, ref.logp):
            lq = torch.log_softmax(logits_fn(w).float()[:-1], -1)
            t = w[1:, None]
            nll -= float(lq.gather(1, t).sum())
            rnll -= float(lr.gather(1, t).sum())
            klds.append((lr.exp() * (lr - lq)).sum(-1).clamp(min=0))
            agree += int((lq.argmax(-1) == lr.argmax(-1)).sum())
            n += t.numel()
    k = torch.cat(klds).double()
    return {"ppl": math.exp(nll / n), "ref_ppl": math.exp(rnll / n), "kld_mean": float(k.mean()),
            "top1_agreement": agree / n, "tokens": n}


def llama_logits(path: Path, ctx: int, threads: int):
    """(the loaded llama.cpp model, to keep alive; window ids -> llama.cpp's logits of every
    position)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                          n_threads=threads, verbose=False)

    def logits(w):
        llm.reset()
        llm.eval(w.tolist())
        return torch.from_numpy(llm.scores[: len(w)].copy())
    return llm, logits


def llama_cpp_rows(gguf_path: Path, types: list[str], ref: RefCache, threads: int) -> dict:
    try:
        import llama_cpp  # noqa: F401  (the availability check)
    except ImportError:
        print("llama-cpp-python not installed: skipping llama.cpp rows", file=sys.stderr)
        return {}
    rows = {}
    tmp = Path(tempfile.mkdtemp(prefix="qq-"))
    ctx = ref.wins.shape[1]
    for t in types:
        out = tmp / f"model-{t}.gguf"
        try:
            requantize(gguf_path, out, t, threads)
        except (ValueError, RuntimeError) as e:
            print(e, file=sys.stderr)
            continue
        llm, logits = llama_logits(out, ctx, threads)
        r = score(logits, ref)
        r["file_mb"] = round(out.stat().st_size / 1e6, 2)
        rows[f"llama.cpp {t}"] = r
        del llm
        out.unlink()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--configs", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--calib", default=None)
    ap.add_argument("--llama-cpp", default="F16,Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None, help="JSON output path")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.model)
    ids = ck.tokenizer.encode(read_text(a.text))
    wins = windows(ids, a.ctx)
    ref_model = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=a.ctx)
    ref = RefCache(ref_model, wins)
    rows = {}
    allc = configs()
    names = a.configs.split(",") if a.configs else list(allc)
    for name in names:
        t0 = time.perf_counter()
        recipe = name if name.startswith("auto") else allc[name]
        model, rep = quantized_model(ck, recipe, a.calib, max_seq_len=a.ctx)
        r = score(lambda w, m=model: m(w[None])[0], ref)
        tot = rep.totals()
        r.update(bpw=tot["bits_per_weight"], quant_mb=round(tot["quantized_bytes"] / 1e6, 2),
                 seconds=round(time.perf_counter() - t0, 1))
        if getattr(rep, "auto", None):
            r["auto"] = rep.auto
        rows[name] = r
        print(f"{name:22} KLD {r['kld_mean']:.5f}  top1 {100 * r['top1_agreement']:.2f}%  "
              f"ppl {r['ppl']:.3f} (ref {r['ref_ppl']:.3f})  bpw {r['bpw']}  {r['seconds']} s",
              file=sys.stderr)
        del model
    if a.llama_cpp and ck.format == "gguf":
        for k, r in llama_cpp_rows(resolve_model(a.model), a.llama_cpp.split(","), ref,
                                   a.threads).items():
            rows[k] = r
            print(f"{k:22} KLD {r['kld_mean']:.5f}  top1 {100 * r['top1_agreement']:.2f}%  "
                  f"ppl {r['ppl']:.3f}  file {r['file_mb']} MB", file=sys.stderr)
    result = {"model": a.model, "text": a.text, "ctx": a.ctx, "tokens": rows and
              next(iter(rows.values()))["tokens"], "rows": rows}
    print("| config | mean KLD | same top token | PPL | ref PPL | bits/weight |")
    print("|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['kld_mean']:.5f} | {100 * r['top1_agreement']:.2f}% | {r['ppl']:.3f} "
              f"| {r['ref_ppl']:.3f} | {r.get('bpw', '-')} |")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
