"""What both command-line tools share: user errors as one line, tracebacks only with --debug."""

from __future__ import annotations

import functools
import sys

import click

from .errors import EdgeError


def report_errors(interrupted: str = "interrupted", oom: str = "out of memory"):
    """Decorate a click command: adds --debug; EdgeError -> 'error: ...' and exit 1;
    Ctrl-C -> exit 130; MemoryError -> a one-line message."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, debug: bool = False, **kwargs):
            try:
                return fn(*args, **kwargs)
            except EdgeError as e:
                if debug:
                    raise
                click.echo(f"error: {e}", err=True)
                sys.exit(1)
            except KeyboardInterrupt:
                click.echo(interrupted, err=True)
                sys.exit(130)
            except MemoryError:
                if debug:
                    raise
                click.echo(f"error: {oom}", err=True)
                sys.exit(1)
        return click.option("--debug", is_flag=True, help="Show tracebacks.")(wrapper)
    return deco
