"""Run one fuzz target under atheris (coverage-guided, libFuzzer's engine).

    python tests/fuzz/run.py TARGET [--runs N] [--seconds S] [--work DIR] [-- LIBFUZZER_ARGS]
    python tests/fuzz/run.py TARGET --replay FILE...

The seed corpus (tests/fuzz/corpus/TARGET) is copied into DIR/corpus (default
build/fuzz/TARGET), where the run adds what it finds; crashing inputs are written to
DIR/findings/. Exit status 0: no finding. libFuzzer's statistics go to stderr; the last line
`#N DONE cov: C ft: F corp: ...` is what benchmarks/fuzz.py tabulates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]


def instrument(atheris) -> None:
    """Coverage instrumentation of the product's loaded functions (edge/, export/, quant/):
    atheris rewrites their bytecode in place."""
    import inspect
    import types

    prefixes = tuple(str(REPO / d) + "/" for d in ("edge", "export", "quant"))
    seen = set()
    for mod in list(sys.modules.values()):
        if not getattr(mod, "__file__", None) or not str(mod.__file__).startswith(prefixes):
            continue
        for obj in list(vars(mod).values()):
            fns = [obj] if isinstance(obj, types.FunctionType) else []
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == mod.__name__:
                for v in vars(obj).values():
                    v = getattr(v, "__func__", v)
                    if isinstance(v, property):
                        fns += [f for f in (v.fget, v.fset) if f]
                    elif isinstance(v, types.FunctionType):
                        fns.append(v)
            for f in fns:
                if id(f.__code__) not in seen and f.__code__.co_filename.startswith(prefixes):
                    seen.add(id(f.__code__))
                    atheris.instrument_func(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target")
    ap.add_argument("--runs", type=int, default=None, help="executions (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, default=None, help="time limit (-max_total_time)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--replay", nargs="+", type=Path, default=None,
                    help="run these inputs once each instead of fuzzing")
    ap.add_argument("libfuzzer", nargs="*", help="further libFuzzer flags (after --)")
    a = ap.parse_args(argv)

    import importlib

    import atheris

    from fuzz.targets import CORPUS, TARGETS, max_len

    if a.target not in TARGETS:
        ap.error(f"unknown target {a.target!r}; one of: {', '.join(TARGETS)}")
    for m in TARGETS[a.target].modules:
        importlib.import_module(m)
    instrument(atheris)
    target = TARGETS[a.target]()
    target.setup()
    if a.replay:
        for f in a.replay:
            target(f.read_bytes())
        print(f"replayed {len(a.replay)} input(s): no finding", file=sys.stderr)
        return 0
    work = a.work or REPO / "build" / "fuzz" / a.target
    corpus, findings = work / "corpus", work / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    if not corpus.exists():
        shutil.copytree(CORPUS / a.target, corpus)
    args = [sys.argv[0], str(corpus), f"-artifact_prefix={findings}/",
            f"-max_len={max_len(a.target)}", "-rss_limit_mb=4096", "-timeout=30",
            "-print_final_stats=1"]
    args += [f"-runs={a.runs}"] if a.runs is not None else []
    args += [f"-max_total_time={a.seconds}"] if a.seconds is not None else []
    atheris.Setup(args + a.libfuzzer, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
