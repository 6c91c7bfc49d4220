"""Writing an output directory so that it is either the previous one or the complete new one.

Every writer of the product (edge artifacts, the export's output directory with every target
and its report, HF / Meta checkpoints, pruned models) writes through `atomic_dir`: the files go
into a temporary directory beside the destination, which then takes the destination's place in
one step (swapped with the previous directory where the system can: renameat2 RENAME_EXCHANGE),
so an interrupted or failed write never leaves something that looks complete and never destroys
the previous output. What a killed writer leaves behind (its temporary directory, or a previous
output it had moved aside) is cleared up by the next write of the same path.

Write failures of the system (a full disk or quota, an I/O error, a read-only or permission-
denied directory) become one-line errors naming the destination, what was written and the
space left, after the temporary files are removed: whichever library was writing (safetensors,
torch.save, onnx, ExecuTorch's serializer, our own files), however it wrapped the system's
error.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import EdgeError

# errno values that mean "the destination cannot take these bytes", not a bug.
WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device",
                errno.EDQUOT: "the disk quota is exhausted",
                errno.EIO: "an I/O error on the device",
                errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted",
                errno.EFBIG: "a file would exceed the file system's size limit"}
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Libraries that wrap the system error in their own (Rust's io::Error in safetensors, torch's
# stream writer) keep its number or text in the message.
_CODE_IN_TEXT = re.compile(r"(?:code:\s*|errno\s*)(\d+)", re.I)
_TEXT_ERRNO = {"no space left on device": errno.ENOSPC, "storagefull": errno.ENOSPC,
               "disk quota exceeded": errno.EDQUOT, "quotaexceeded": errno.EDQUOT,
               "input/output error": errno.EIO, "read-only file system": errno.EROFS,
               "permission denied": errno.EACCES}
# Below this much free space a writer failing without an errno is taken to have filled the
# device (torch's stream writer says only "file write failed").
FULL_DEVICE_BYTES = 1 << 20


class WriteError(EdgeError):
    """The destination could not take the output; nothing at the destination was changed."""


class DestinationError(EdgeError):
    """The output path may not be written (it is an input, or exists and --force was not
    given)."""


def write_errno(exc: BaseException) -> int | None:
    """The system error behind `exc` (or the exceptions it was raised from), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return exc.errno
        text = str(exc)
        m = _CODE_IN_TEXT.search(text)
        if m and int(m.group(1)) in WRITE_ERRNOS:
            return int(m.group(1))
        low = text.lower()
        for needle, code in _TEXT_ERRNO.items():
            if needle in low:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_space(directory, need: int, what: str) -> None:
    """Refuse before writing `need` bytes of `what` into `directory` when its file system has
    less free space than that."""
    free = free_bytes(directory)
    if free is not None and need > free:
        raise WriteError(f"{directory}: {what} needs about {_mb(need)} and the device has "
                         f"{_mb(free)} free; free space or choose another output directory")


def _describe_failure(out: Path, tmp: Path, exc: BaseException) -> WriteError | None:
    code = write_errno(exc)
    written = tree_bytes(tmp) if tmp.exists() else 0
    free = free_bytes(tmp.parent)
    if code is None and free is not None and free < FULL_DEVICE_BYTES and \
            isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, EdgeError):
        code = errno.ENOSPC  # a writer that reports no errno, on a device that is now full
    if code is None:
        return None
    what = WRITE_ERRNOS[code]
    if code in SPACE_ERRNOS:
        room = f"; {_mb(free)} free now" if free is not None else ""
        return WriteError(f"{out}: {what} after writing {_mb(written)} of the output{room}. "
                          "The output needs more than that: free space or choose another "
                          f"output directory; {out} was left as it was")
    return WriteError(f"{out}: cannot write the output ({what}); {out} was left as it was")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _replace_in_two_steps(tmp: Path, dest: Path) -> None:
    """Move the previous output aside, then the new one in; if the second step fails, the
    previous output goes back."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if not (dest.exists() or dest.is_symlink()):
            os.replace(old, dest)
        raise
    remove(old)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(dest: Path) -> None:
    """Clear up after a writer of `dest` that was killed mid-way (its process is gone): its
    temporary directories go; a previous output it had moved aside goes back to `dest` if
    nothing took its place, otherwise it goes too."""
    for prefix in (f".{dest.name}.old-", f".{dest.name}.tmp-"):
        for p in sorted(dest.parent.glob(glob.escape(prefix) + "*")):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if prefix.endswith(".old-") and not (dest.exists() or dest.is_symlink()):
                os.replace(p, dest)
            else:
                remove(p)


def check_destination(out: Path, force: bool, inputs: tuple = ()) -> None:
    """Refuse an output path that is an input; without force, also one that is a symbolic
    link, a file or a non-empty directory. With force, a symbolic link is replaced itself,
    never written through."""
    for src in inputs:
        try:
            same = out.resolve() == Path(src).resolve()
        except OSError:
            same = False
        if same:
            raise DestinationError(f"{out}: the output path is the input checkpoint; choose "
                                   "another output directory")
    if force:
        return
    if out.is_symlink():
        raise DestinationError(f"{out}: already exists (a symbolic link); pass --force to "
                               "replace the link (its target is left alone)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DestinationError(f"{out}: already exists; pass --force to replace it")


@contextlib.contextmanager
def atomic_dir(out, force: bool = False, inputs: tuple = ()):
    """Yield an empty temporary directory beside `out`; when the block completes, it takes
    `out`'s place (replacing a previous output only with force). On any failure the temporary
    directory is removed and `out` is untouched; system write failures become a WriteError."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if parent.is_dir():
        remove_stale_temporaries(out)
    check_destination(out, force, inputs)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{parent}: cannot create the output's directory ({e.strerror})") \
            from None
    if not os.access(parent, os.W_OK):
        raise WriteError(f"{parent}: directory is not writable")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:
        err = _describe_failure(out, parent / ".", e)
        raise (err or e) from None
    try:
        yield tmp
        if not (out.exists() or out.is_symlink()):
            os.replace(tmp, out)
        elif out.is_dir() and not out.is_symlink() and _exchange(tmp, out):
            remove(tmp)  # now the previous output
        else:
            _replace_in_two_steps(tmp, out)
    except BaseException as e:
        translated = _describe_failure(out, tmp, e)
        remove(tmp)
        if translated is not None:
            raise translated from None
        raise
