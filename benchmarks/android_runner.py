"""Tokens/s of an exported .pte in ExecuTorch's LLM runner (TextLLMRunner, the C++ runner that
Android's LlmModule wraps) with the Android app's own request: a task prompt from
edge/data/tasks.json in the model's chat format, built from the llama_edge_app.json beside the
program exactly as the app builds it (export/targets/app_config.py `app_prompt`), greedy as the tasks'
defaults. On a workstation this stands in for the phone: same runner, program and prompt.

    python benchmarks/android_runner.py -m OUT/xnnpack/model.pte [--task summarize|rewrite]
        [--style formal] [--input FILE] [--max-new-tokens N] [--runs 5] [--json]

Each run resets the runner's context (as the app does before each request) and generates the
same request after one short warm-up generation. Figures are the runner's own statistics, the
median over runs: decode = generated tokens / (end - prompt evaluated), prompt = prompt tokens /
(prompt evaluated - start), time to first token = first token - start. The runner uses its
default thread pool (all cores of the process).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DEFAULT_INPUT = REPO / "edge" / "data" / "sample.txt"
WARMUP_TOKENS = 4


def app_request(pte: Path, task: str, text_file: Path, style: str | None):
    """(prompt string, token ids, the app's JSON) for the app's request on this model."""
    from edge.tasks import read_input, rewrite_messages, summarize_messages
    from edge.tokenizer import Tokenizer
    from export.targets.app_config import APP_CONFIG, app_prompt

    side = pte.parent / APP_CONFIG
    if not side.is_file():
        raise SystemExit(f"{side}: not found; export the model again with llama-export ... "
                         "--target xnnpack (it writes the app's JSON beside model.pte)")
    cfg = json.loads(side.read_text(encoding="utf-8"))
    text = read_input(text_file)
    if task == "rewrite":
        msgs = rewrite_messages(text, style or "formal")
    else:
        msgs = summarize_messages(text)
    today = datetime.date.today().strftime("%d %b %Y")  # the device's date, as the app sends it
    prompt, ids = app_prompt(Tokenizer.from_hf_dir(pte.parent), cfg, msgs, today)
    return prompt, ids, cfg


@contextlib.contextmanager
def stdout_to_stderr():
    """The runner prints every piece and its report on stdout; keep stdout for our result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def measure(pte: Path, prompt: str, ends: set[str], max_new: int, runs: int) -> dict:
    import executorch.kernels.quantized  # noqa: F401 (the app's runtime links these kernels)
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edge.bench import peak_rss_mb

    t0 = time.perf_counter()
    runner = TextLLMRunner(str(pte), str(pte.parent / "tokenizer.json"))
    runner.generate(prompt, GenerationConfig(max_new_tokens=WARMUP_TOKENS, temperature=0.0,
                                             echo=False))
    load_s = time.perf_counter() - t0  # includes the warm-up generation
    rows, text = [], ""
    for _ in range(runs):
        runner.reset()
        pieces, stats = [], []
        runner.generate(prompt, GenerationConfig(max_new_tokens=max_new, temperature=0.0,
                                                 echo=False),
                        token_callback=pieces.append, stats_callback=stats.append)
        s = stats[-1]
        prefill = (s.prompt_eval_end_ms - s.inference_start_ms) / 1e3
        decode = (s.inference_end_ms - s.prompt_eval_end_ms) / 1e3
        rows.append({"prompt_tokens": s.num_prompt_tokens,
                     "generated_tokens": s.num_generated_tokens,
                     "prefill_tok_s": s.num_prompt_tokens / prefill if prefill > 0 else None,
                     "decode_tok_s": s.num_generated_tokens / decode if decode > 0 else None,
                     "ttft_s": (s.first_token_ms - s.inference_start_ms) / 1e3})
        shown = []
        for piece in pieces:  # the app's end-of-generation handling
            if piece in ends:
                break
            shown.append(piece)
        text = "".join(shown)

    def median(key):
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {"prompt_tokens": rows[-1]["prompt_tokens"],
            "generated_tokens": rows[-1]["generated_tokens"],
            "decode_tok_s": median("decode_tok_s"), "prefill_tok_s": median("prefill_tok_s"),
            "ttft_s": median("ttft_s"), "runs": rows, "load_and_warmup_s": round(load_s, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1), "text": text}


def main(argv=None) -> None:
    from edge.tasks import task_defaults

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, type=Path, help="model.pte from --target "
                    "xnnpack (with tokenizer.json and llama_edge_app.json beside it)")
    ap.add_argument("--task", choices=("summarize", "rewrite"), default="summarize")
    ap.add_argument("--style", default=None, help="rewrite style (default: formal)")
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="the document")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="output cap (default: the task's, from edge/data/tasks.json)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    max_new = args.max_new_tokens or task_defaults(args.task)["max_new_tokens"]
    prompt, ids, cfg = app_request(args.model, args.task, args.input, args.style)
    if len(ids) + max_new > cfg["max_context"]:
        raise SystemExit(f"prompt ({len(ids)} tokens) + --max-new-tokens {max_new} exceed the "
                         f"program's context of {cfg['max_context']}; use a shorter --input")
    with stdout_to_stderr():
        r = measure(args.model, prompt, {e["text"] for e in cfg["end_of_generation"]}, max_new,
                    args.runs)
    r.update(model=str(args.model), task=args.task, chat_format=cfg["chat_format"],
             app_prompt_tokens=len(ids), max_new_tokens=max_new)
    if args.json:
        print(json.dumps(r, ensure_ascii=False))
        return
    print(f"{args.model} ({cfg['chat_format']}), {args.task}: {r['prompt_tokens']} prompt tokens, "
          f"{r['generated_tokens']} generated (median of {args.runs} runs)")
    print(f"decode {r['decode_tok_s']} tok/s, prompt {r['prefill_tok_s']} tok/s, "
          f"first token {r['ttft_s']} s, peak RSS {r['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
