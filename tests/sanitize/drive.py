"""Sanitizer driver: the kernels built with AddressSanitizer + UndefinedBehaviorSanitizer or
ThreadSanitizer (scripts/sanitize.sh), run through the Python runtime the way a server runs
them: one model shared by several sessions decoding at once from several threads, with
multi-token passes, prefix snapshots, rewinds, resets and generations abandoned halfway.

    python tests/sanitize/drive.py PATH/_kernels.so

Every session's greedy tokens must equal the same request run alone; the sanitizer reports
(and aborts on) any memory error, undefined behaviour or data race in the kernels.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
THREADS = 2  # the kernels' own pool: two workers per forward pass
SESSIONS = 4
NEW_TOKENS = 12
PROMPTS = ([5, 17, 99, 3, 44, 120, 8], [200, 201, 7], list(range(30, 70)), [1, 2, 3, 4, 5, 6, 7, 8, 9])


def load_kernels(path: str):
    spec = importlib.util.spec_from_file_location("edge._kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["edge._kernels"] = mod
    import edge

    edge._kernels = mod
    return mod


def exercise(engine, prompt, want, errors):
    """One client: the request, then the same request through every other path."""
    from support.generation import greedy

    try:
        s = engine.session()
        for _ in range(2):
            got = greedy(s, prompt, NEW_TOKENS)
            assert got == want, ("plain", got, want)
        # abandoned halfway, then started over from a reset
        greedy(s, prompt, NEW_TOKENS // 2)
        s.reset()
        assert greedy(s, prompt, NEW_TOKENS) == want
        # the prompt's prefix from a snapshot, the rest as one multi-token pass
        s.prefill(prompt[:2])
        snap = s.snapshot(2)
        s.restore(snap)
        logits = s.forward(prompt[2:])[-1] if len(prompt) > 2 else s.extend([])
        got = []
        for _ in range(NEW_TOKENS):
            got.append(int(np.argmax(logits)))
            logits = s.decode(got[-1])
        assert got == want, ("snapshot", got, want)
        # a rejected draft: three wrong tokens checked in one pass, then rewound
        s.prefill(prompt)
        at = s.pos
        s.forward([0, 1, 2])
        s.rewind(at)
        logits = s.extend([want[0]])
        assert int(np.argmax(logits)) == want[1]
    except BaseException as e:  # noqa: BLE001 (reported by the main thread)
        errors.append(e)


def main() -> int:
    load_kernels(sys.argv[1])
    from support import artifacts
    from support.generation import greedy

    from edge.engines.native import EdgeEngine

    with tempfile.TemporaryDirectory() as tmp:
        art = artifacts.write(Path(tmp) / "art")
        for kv in ("f32", "int8"):
            engine = EdgeEngine(art, max_context=128, threads=THREADS, kv=kv)
            want = [greedy(engine.session(), p, NEW_TOKENS) for p in PROMPTS]  # alone
            for rnd in range(3):
                errors: list = []
                clients = [threading.Thread(target=exercise, args=(
                    engine, PROMPTS[i % len(PROMPTS)], want[i % len(PROMPTS)], errors))
                    for i in range(SESSIONS)]
                for c in clients:
                    c.start()
                for c in clients:
                    c.join()
                if errors:
                    raise errors[0]
            print(f"kv={kv}: {SESSIONS} sessions x 3 rounds on {engine.isa}, tokens as alone")
    print("SANITIZE DRIVER OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
