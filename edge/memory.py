"""The process's memory, read from /proc (Linux; elsewhere the probes return what they can),
and the two ways the toolchain keeps freed memory from inflating later peaks."""

from __future__ import annotations

import contextlib
import resource


def proc_kb(path: str, field: str) -> int | None:
    """A 'Field:  N kB' line of a /proc file (None where it cannot be read)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (since exec, or since the peak was reset
    with reset_peak_rss). VmHWM starts afresh at exec, unlike getrusage's maxrss, which a
    child inherits from the parent that started it."""
    kb = proc_kb("/proc/self/status", "VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def rss_mb() -> float:
    """The process's resident memory now (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: /proc/self/clear_refs, value 5), so that each stage of a job
    reports its own; False where the peak cannot be reset (then peaks are since the start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    kb = proc_kb("/proc/meminfo", "MemAvailable")
    return None if kb is None else kb * 1024


def return_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them mapped
    otherwise, and the next stage's peak would stand on them)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# Heap blocks at least this large are mapped on their own and unmapped when freed. glibc
# otherwise raises its threshold as large blocks are freed (up to 32 MiB) and keeps freed ones
# for reuse: at the Llama 3.2 1B shape, loading alone then peaked 0.8 GB above its resident
# weights.
MMAP_THRESHOLD_BYTES = 4 << 20


# While a compute-bound stage runs (the calibrating quantizer), blocks up to this size come from
# the heap and freed ones are kept for reuse: with the 4 MiB threshold, each of its many
# short-lived 5-20 MB activation tensors was mapped, faulted in page by page and unmapped
# again (SmolLM2 8da4w: 15 million page faults, 30 s of system time, quantize 106 s instead of
# 94 s). 32 MiB is glibc's largest mmap threshold on 64-bit.
REUSE_MMAP_THRESHOLD_BYTES = 32 << 20
REUSE_TRIM_THRESHOLD_BYTES = 64 << 20
_GLIBC_TRIM_THRESHOLD_BYTES = 128 << 10  # glibc's default M_TRIM_THRESHOLD
_bounded = False  # bound_heap_retention() was called in this process


def _mallopt(param: int, value: int) -> bool:
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def bound_heap_retention() -> None:
    """Fix glibc's mmap threshold (no-op elsewhere), so that freed temporaries of a stage go
    back to the system instead of raising the next stage's peak. Process-wide: call it from a
    command's own process only."""
    global _bounded
    _bounded = _mallopt(-3, MMAP_THRESHOLD_BYTES) or _bounded  # M_MMAP_THRESHOLD


@contextlib.contextmanager
def reusing_heap():
    """Within the block, keep freed heap blocks up to REUSE_MMAP_THRESHOLD_BYTES for reuse; on
    leaving, bound the heap again and hand what is free back to the system. Nothing changes
    where bound_heap_retention() was not called (the allocator's own policy then holds)."""
    if not _bounded:
        yield
        return
    _mallopt(-3, REUSE_MMAP_THRESHOLD_BYTES)
    _mallopt(-1, REUSE_TRIM_THRESHOLD_BYTES)  # M_TRIM_THRESHOLD
    try:
        yield
    finally:
        _mallopt(-1, _GLIBC_TRIM_THRESHOLD_BYTES)
        _mallopt(-3, MMAP_THRESHOLD_BYTES)
        return_free_memory()
