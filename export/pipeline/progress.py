"""Progress of the export's longer stages (quantize, lowering, verify, quality) on a terminal:
one bar per stage on stderr, with its elapsed and estimated remaining time, shown only when
stderr is a terminal (logs and pipes get the stage lines alone)."""

from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm


def shown() -> bool:
    """Bars are drawn only on a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def stage_bar(desc: str, total: int, unit: str) -> tqdm:
    """A bar of `total` units for one stage; tqdm estimates the time left from the units done.
    Removed from the terminal when closed (the stage's own line follows)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not shown(),
                file=sys.stderr, dynamic_ncols=True)


def counted(fn: Callable, bar: tqdm) -> Callable:
    """fn, advancing `bar` by one per call (a window scored, a step taken)."""
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        bar.update(1)
        return out
    return call
