"""The process's memory, read from /proc (Linux; elsewhere the probes return what they can),
and the two ways the toolchain keeps freed memory from inflating later peaks."""

from __future__ import annotations

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


def bound_heap_retention() -> None:
    """Fix glibc's mmap threshold (no-op elsewhere), so that freed temporaries of a stage go
    back to the system instead of raising the next stage's peak. Process-wide: call it from a
    command's own process only."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
