"""Every SIMD kernel set against the scalar reference through the standalone driver
edge/csrc/tools/parity_main.cpp, built for this machine (the x86 sets) and for aarch64, the latter
run under qemu-user on a CPU with the dot product instructions (neon and neon-dotprod checked) and
on a Cortex-A53, which lacks them (neon only; the dotprod set must never be chosen there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "edge" / "csrc"
# the parity program and the kernel tier it checks (paths under edge/csrc)
SOURCES = ["tools/parity_main.cpp", "kernels/scalar/reference.cpp", "kernels/x86/avx2.cpp",
           "kernels/x86/avx512.cpp", "kernels/arm/kernels_neon.cpp", "kernels/acts.cpp",
           "kernels/dispatch.cpp"]
FLAGS = ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-I", str(CSRC)]
HOST_CXX = "g++"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
ARM_PACKAGES = "gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user"  # scripts/setup.sh installs them
HOST_PACKAGES = "g++"
RUN_TIMEOUT = 300  # seconds; a full qemu run takes a few


def _require(tools: list[str], packages: str) -> None:
    """Skip when a tool is missing; fail in CI, whose setup must install it."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    msg = (f"{', '.join(missing)} not found: install {packages} "
           f"(apt-get install -y --no-install-recommends {packages})")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _build(cxx: str, out: Path, extra: list[str]) -> Path:
    cmd = [cxx, *FLAGS, *extra, *(str(CSRC / s) for s in SOURCES), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"building the parity driver failed:\n{' '.join(cmd)}\n{r.stderr}")
    return out


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "EDGE_ISA"}
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=full_env)


def _checked_sets(stdout: str) -> set[str]:
    """Kernel sets that a parity run compared against scalar."""
    return set(re.findall(r"^isa=(\S+)\s+kernel=matmul_q", stdout, re.M))


def _listing(stdout: str) -> tuple[set[str], str]:
    available = set(re.findall(r"^available (\S+)$", stdout, re.M))
    best = re.search(r"^best (\S+)$", stdout, re.M)
    assert best, stdout
    return available, best.group(1)


def _assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0 and re.search(r"^PARITY OK \d+ cases$", r.stdout, re.M), (
        f"rc={r.returncode}\n{r.stdout}\n{r.stderr}")


def _assert_fails(r: subprocess.CompletedProcess) -> None:
    assert r.returncode != 0 and "PARITY FAIL" in r.stdout, f"rc={r.returncode}\n{r.stdout}"
    assert "PARITY OK" not in r.stdout


@pytest.fixture(scope="module")
def drivers(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def host_driver(drivers) -> Path:
    _require([HOST_CXX], HOST_PACKAGES)
    return _build(HOST_CXX, drivers / "parity_host", [])


@pytest.fixture(scope="module")
def arm_driver(drivers) -> Path:
    _require([CROSS_CXX, QEMU], ARM_PACKAGES)
    return _build(CROSS_CXX, drivers / "parity_aarch64", ["-static"])


def _qemu(cpu: str, driver: Path, *args: str) -> list[str]:
    return [QEMU, "-cpu", cpu, str(driver), *args]


def test_host_sets_match_scalar(host_driver):
    available, best = _listing(_run([str(host_driver), "--list"]).stdout)
    assert "scalar" in available and best in available
    r = _run([str(host_driver)])
    _assert_ok(r)
    assert _checked_sets(r.stdout) == available - {"scalar"}


def test_host_injected_error_is_reported(host_driver):
    _assert_fails(_run([str(host_driver), "--inject-error"]))


@pytest.mark.parametrize("cpu, sets, best", [
    ("max", {"neon", "neon-dotprod"}, "neon-dotprod"),
    ("cortex-a53", {"neon"}, "neon"),
], ids=["cpu-max", "cortex-a53"])
def test_arm_sets_match_scalar(arm_driver, cpu, sets, best):
    available, chosen = _listing(_run(_qemu(cpu, arm_driver, "--list")).stdout)
    assert available == {"scalar"} | sets
    assert chosen == best
    r = _run(_qemu(cpu, arm_driver))
    _assert_ok(r)
    assert _checked_sets(r.stdout) == sets


def test_arm_edge_isa_caps_the_choice(arm_driver):
    r = _run(_qemu("max", arm_driver, "--list"), env={"EDGE_ISA": "neon"})
    assert _listing(r.stdout)[1] == "neon"


def test_arm_injected_error_is_reported(arm_driver):
    _assert_fails(_run(_qemu("max", arm_driver, "--inject-error")))
