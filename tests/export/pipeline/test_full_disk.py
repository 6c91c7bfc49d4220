"""Writers on a device that fills up, or will not take writes at all: every target of
`llama-export export`, `llama-export prune` and the HF writer, on a real small file system
(tmpfs) mounted by the test.

For each writer: a first export succeeds (the previous artifact); the file system is then filled
to leave a fraction of that artifact's size free, and the same export with --force must fail
with one line naming the output and the space left, leave no temporary files, and leave the
previous artifact byte for byte as it was (and loadable). The fractions make the write fail at
different points: the first file, the middle of the weights, the last files (report,
manifest). A read-only file system gives a one-line error too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from export.cli import main as export_cli

# Free space left for the second export, as fractions of the first one's size on disk.
FREE_FRACTIONS = (0.0, 0.35, 0.9)
# Fewer points for the slow target (lowering to a .pte takes ~10 s each).
FREE_FRACTIONS_XNNPACK = (0.0, 0.6)
FS_BYTES = 64 << 20
CTX = "256"
MOBILE_RTN = Path(__file__).resolve().parents[3] / "benchmarks" / "recipes" / "mobile-rtn.json"


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of FS_BYTES mounted at tmp_path / "fs" (needs root, as CI runs)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk tests: {r.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs needs root: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fill(fs: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of the file system."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        n = max(0, free - leave)
        chunk = b"\0" * (1 << 20)
        while n > 0:
            f.write(chunk[:min(n, len(chunk))])
            n -= min(n, len(chunk))
    return filler


def run_cli(args) -> tuple[int, str]:
    r = CliRunner().invoke(export_cli, [str(a) for a in args])
    return r.exit_code, r.output


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def check_full_disk(small_fs, args, load, fractions=FREE_FRACTIONS):
    out = small_fs / "out"
    code, text = run_cli([*args, "-o", out])
    assert code == 0, text
    before = snapshot(out)
    size = tree_bytes(out)
    for frac in fractions:
        filler = fill(small_fs, int(frac * size))
        code, text = run_cli([*args, "-o", out, "--force"])
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert code == 1, text
        assert len(errors) == 1 and "Traceback" not in text, text
        msg = errors[0]
        assert str(out) in msg and "no space left on the device" in msg and "free now" in msg, msg
        assert leftovers(out) == [], (frac, leftovers(out))
        assert snapshot(out) == before, frac
        filler.unlink()
        load(out)


@pytest.mark.parametrize("target", ["edge", "gguf", "onnx", "hf"])
def test_export_onto_a_full_disk(small_fs, tiny_ckpt, target):
    def load(out):
        if target == "edge":
            from edge.engines import open_model

            open_model(str(out / "edge")).session().prefill([1, 2, 3])
        elif target == "gguf":
            from export.loaders import load_checkpoint

            load_checkpoint(out / "model.gguf")
        elif target == "onnx":
            from edge.engines.onnxruntime import OnnxEngine

            OnnxEngine(out / "onnx", max_context=64).session().prefill([1, 2, 3])
        else:
            from export.loaders import load_checkpoint

            load_checkpoint(out / "hf")

    recipe = "none" if target == "hf" else "int8"
    check_full_disk(small_fs, ["export", tiny_ckpt, "--target", target, "--recipe", recipe,
                               "--max-context", CTX], load)


def test_xnnpack_export_onto_a_full_disk(small_fs, tiny_ckpt):
    def load(out):
        from edge.engines.executorch import ExecuTorchEngine

        ExecuTorchEngine(out / "xnnpack" / "model.pte").session().prefill([1, 2, 3])

    check_full_disk(small_fs, ["export", tiny_ckpt, "--target", "xnnpack", "--recipe",
                               MOBILE_RTN, "--max-context", CTX],
                    load, FREE_FRACTIONS_XNNPACK)


def test_prune_onto_a_full_disk(small_fs, tiny_ckpt):
    from export.loaders import load_checkpoint

    check_full_disk(small_fs, ["prune", tiny_ckpt, "--prune", "layers=1",
                               "--prune-method", "magnitude"], load_checkpoint)


def test_read_only_file_system(small_fs, tiny_ckpt):
    out = small_fs / "out"
    code, text = run_cli(["export", tiny_ckpt, "--recipe", "int8", "--max-context", CTX,
                          "-o", out])
    assert code == 0, text
    before = snapshot(out)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    code, text = run_cli(["export", tiny_ckpt, "--recipe", "int8", "--max-context", CTX,
                          "-o", out, "--force"])
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in text, text
    assert "read-only" in errors[0] or "not writable" in errors[0], errors[0]
    assert snapshot(out) == before and leftovers(out) == []


def test_space_check_before_writing(tmp_path):
    from edge.atomic import WriteError, check_space

    with pytest.raises(WriteError, match="needs about .* MB and the device has"):
        check_space(tmp_path, 1 << 62, "the artifact")
    check_space(tmp_path, 1, "the artifact")
