"""What the aarch64 runtime tests compare across machines, computed by the runtime alone (numpy,
tokenizers and the edge kernels; no torch), so one script runs on the host's Python and on the
arm64 Python under qemu-user:

    python arm_probe.py ARTIFACT greedy N PROMPT     -> {"isa", "ids", "cpu", "tokens": N greedy ids}
    python arm_probe.py ARTIFACT logits OUT.npy PROMPT -> {"isa", "ids", "cpu"}; OUT.npy: logits of
                                                       every prompt position (teacher-forced)

PROMPT is raw text (no chat turn), or "ids:" and comma-separated token ids. Emulated kernels
are slow: prompts stay short."""

from __future__ import annotations

import json
import sys

import numpy as np

from edge.bench import cpu_info
from edge.engines.native import EdgeEngine

CONTEXT = 128
THREADS = 2


def main(argv: list[str]) -> None:
    artifact, mode, arg, prompt = argv
    engine = EdgeEngine(artifact, max_context=CONTEXT, threads=THREADS, verify=False)
    if prompt.startswith("ids:"):
        ids = [int(i) for i in prompt[4:].split(",")]
    else:
        ids = [int(i) for i in engine.tokenizer.encode(prompt)]
    out = {"isa": engine.isa, "ids": ids, "cpu": cpu_info()}
    session = engine.session()
    if mode == "greedy":
        logits = session.prefill(ids)
        tokens = []
        for _ in range(int(arg)):
            tokens.append(int(np.argmax(logits)))
            logits = session.decode(tokens[-1])
        out["tokens"] = tokens
    elif mode == "logits":
        np.save(arg, np.asarray(session.logits_all(ids), dtype=np.float32))
    else:
        raise SystemExit(f"unknown mode {mode!r}: greedy or logits")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
