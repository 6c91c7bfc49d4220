"""Keeping other libraries' informational output off the user's terminal.

ExecuTorch's runtime (and the cpuinfo library inside it) writes info lines such as
``[threadpool.cpp:66] Resetting threadpool to 2 threads.`` straight to file descriptor 2 while a
program or method loads, and importing executorch's Python package brings in torchao, whose
logger reports every optional CUDA library it cannot load. None of it is meant for someone
running ``llama-edge run``: the CLI's stderr is for our one-line errors.

`native_log_held` holds what native code writes to fd 2 during a block, drops the lines in the
native log format and writes everything else back (so a Python warning or another thread's
message in that window is not lost); the dropped lines are kept for an error message.
`quiet_imports` raises the named Python loggers to ERROR for the duration of an import
(`quiet_import_loggers` for the rest of a command's process).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager

# "[file.cpp:123] message" (ExecuTorch's and cpuinfo's release-build format), optionally after a
# level letter and a timestamp ("I 00:00:00.123456 executorch:file.cpp:123] message").
_NATIVE_LINE = re.compile(rb"^(?:[DIWEF] \d\d:\d\d:\d\d\.\d+ \w+:)?\[?[\w./+-]+\.(?:c|cc|cpp|h):"
                          rb"\d+\] ")
_lock = threading.RLock()
_depth = 0
IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


class HeldLog:
    """The native log lines a block produced (filled when the block ends)."""

    def __init__(self):
        self.lines: list[str] = []

    def tail(self, n: int = 3) -> str:
        return " / ".join(self.lines[-n:])


@contextmanager
def native_log_held():
    held = HeldLog()
    global _depth
    with _lock:
        if _depth:  # nested: the outer block holds fd 2 already
            _depth += 1
            try:
                yield held
            finally:
                _depth -= 1
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to hold
            yield held
            return
        sink = tempfile.TemporaryFile()
        os.dup2(sink.fileno(), 2)
        _depth = 1
        try:
            yield held
        finally:
            _depth = 0
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            keep = []
            for line in sink.read().splitlines(keepends=True):
                if _NATIVE_LINE.match(line):
                    held.lines.append(line.decode("utf-8", "replace").rstrip())
                else:
                    keep.append(line)
            sink.close()
            if keep:
                os.write(2, b"".join(keep))


def quiet_import_loggers(names=IMPORT_LOGGERS) -> None:
    """For a command's own process: the import-time notices stay off for its whole run."""
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)


@contextmanager
def quiet_imports(names=IMPORT_LOGGERS):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
