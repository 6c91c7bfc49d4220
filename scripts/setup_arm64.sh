#!/usr/bin/env bash
# Build the llama-edge runtime for aarch64 and an arm64 Python to run it, on an x86-64 host:
#
#   build/arm64/root   Debian arm64 files (Python 3.11 and the C library), from debootstrap's
#                      package set, unpacked (no chroot: qemu-user runs its programs with
#                      this folder as the library prefix)
#   build/arm64/site   the runtime: the edge package, its kernels cross-compiled with
#                      aarch64-linux-gnu-g++ from the sources CMakeLists.txt lists, and the
#                      aarch64 wheels of its dependencies, at the versions of .venv's
#   build/arm64/bin    python and llama-edge launchers running under qemu-aarch64; the
#                      emulated CPU is $QEMU_CPU (cortex-a53, cortex-a76, max, ...); and
#                      llama-edge-bench, the standalone bench program (static, no Python:
#                      for phones and minimal images; `llama-edge bench --boards` pushes it)
#
#   bash scripts/setup_arm64.sh            # then: QEMU_CPU=cortex-a76 build/arm64/bin/llama-edge run ...
#
# Repeated runs redo only what is out of date. Needs .venv (scripts/setup.sh) and, on a
# machine without them, apt-get as root for debootstrap, qemu-user and the cross compiler.
# $LLAMA_EDGE_DEBIAN_MIRROR picks the Debian mirror (default: deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${LLAMA_EDGE_ARM64_DIR:-$REPO/build/arm64}
SUITE=bookworm          # its python3 is 3.11: the wheels below are chosen for it
PYVER=3.11
MIRROR=${LLAMA_EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VPY=$REPO/.venv/bin/python
PACKAGES="debootstrap qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"

die() { echo "setup_arm64: $*" >&2; exit 1; }
[ -x "$VPY" ] || die "no .venv: run scripts/setup.sh first"

need=()
for tool in debootstrap dpkg-deb qemu-aarch64 aarch64-linux-gnu-g++; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing ${need[*]}: install $PACKAGES (apt-get install -y --no-install-recommends $PACKAGES)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null; } \
        || die "apt-get could not install $PACKAGES"
fi
mkdir -p "$OUT"

# 1. The arm64 root: debootstrap's first stage downloads the packages and unpacks the
#    essential ones; the rest (Python, its headers) are unpacked here. No maintainer script
#    runs, none is needed to run Python.
ROOT=$OUT/root
if [ ! -f "$ROOT/.complete" ]; then
    echo "setup_arm64: Debian $SUITE arm64 files from $MIRROR" >&2
    tmp=$(mktemp -d "$OUT/root.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3-minimal,libpython$PYVER-stdlib,libpython$PYVER-dev \
        "$SUITE" "$tmp" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
        || die "debootstrap failed (log: $OUT/debootstrap.log)"
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$tmp"
    done
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    [ -x "$tmp/usr/bin/python$PYVER" ] || die "python$PYVER missing from the arm64 packages"
    touch "$tmp/.complete"
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
    trap - EXIT
fi

# 2. Dependencies: aarch64 wheels at the versions installed in .venv (so both builds tokenize
#    and read files alike): the runtime's dependencies in pyproject.toml, without their own
#    optional ones (tokenizers needs no model hub here).
SITE=$OUT/site
pins=$("$VPY" - <<'EOF'
import re, tomllib
from importlib.metadata import version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in deps]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
if [ "$(cat "$SITE/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "setup_arm64: aarch64 wheels: $pins" >&2
    rm -rf "$SITE.new"
    "$VPY" -m pip install --quiet --no-warn-script-location --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --python-version $PYVER --implementation cp \
        --target "$SITE.new" $pins 2>"$OUT/pip.log" \
        || die "pip could not fetch the aarch64 wheels (log: $OUT/pip.log)"
    echo "$pins" >"$SITE.new/.pins"
    rm -rf "$SITE"
    mv "$SITE.new" "$SITE"
fi

# 3. The edge package (Python sources and data) as in the checkout.
rm -rf "$SITE/edge.new"
mkdir -p "$SITE/edge.new"
tar -C "$REPO/edge" --exclude=__pycache__ --exclude=csrc --exclude='*.so' -cf - . \
    | tar -C "$SITE/edge.new" -xf -
KMOD=_kernels.cpython-${PYVER/./}-aarch64-linux-gnu.so
[ -f "$SITE/edge/$KMOD" ] && cp -p "$SITE/edge/$KMOD" "$SITE/edge.new/"
rm -rf "$SITE/edge"
mv "$SITE/edge.new" "$SITE/edge"

# 4. The kernels, cross-compiled with the flags CMakeLists.txt gives them, from the sources it
#    lists. Rebuilt when a source or CMakeLists.txt is newer.
sources=$(sed -n '/^set(EDGE_\(KERNEL\|RUNTIME\)_SOURCES/,/)/p' CMakeLists.txt \
          | grep -o 'edge/csrc/[^ )]*\.cpp')
[ -n "$sources" ] || die "no kernel sources found in CMakeLists.txt"
if [ ! -f "$SITE/edge/$KMOD" ] \
        || [ -n "$(find CMakeLists.txt edge/csrc -newer "$SITE/edge/$KMOD" -print -quit)" ]; then
    echo "setup_arm64: compiling the kernels for aarch64" >&2
    INC=$OUT/include  # Python's headers, and pyconfig.h where Debian's multiarch layout has it
    mkdir -p "$INC/aarch64-linux-gnu"
    ln -sfn "$ROOT/usr/include/python$PYVER" "$INC/python$PYVER"
    ln -sfn "$ROOT/usr/include/aarch64-linux-gnu/python$PYVER" "$INC/aarch64-linux-gnu/python$PYVER"
    pybind=$("$VPY" -c "import pybind11; print(pybind11.get_include())")
    # shellcheck disable=SC2086
    aarch64-linux-gnu-g++ -std=c++20 -O3 -fno-math-errno -fPIC -shared -fvisibility=hidden \
        -Wall -Wextra -Wno-unused-parameter -I edge/csrc -I "$pybind" -I "$INC/python$PYVER" \
        -I "$INC" $sources -o "$SITE/edge/$KMOD.tmp" -lpthread \
        || die "cross-compiling the kernels failed"
    mv "$SITE/edge/$KMOD.tmp" "$SITE/edge/$KMOD"
fi

# 5. The standalone bench program, statically linked (runs on any aarch64 Linux or Android).
BENCH=$OUT/bin/llama-edge-bench
mkdir -p "$OUT/bin"
if [ ! -f "$BENCH" ] \
        || [ -n "$(find CMakeLists.txt edge/csrc -newer "$BENCH" -print -quit)" ]; then
    echo "setup_arm64: compiling llama-edge-bench for aarch64 (static)" >&2
    runtime=$(echo "$sources" | grep -v bindings.cpp)
    # shellcheck disable=SC2086
    aarch64-linux-gnu-g++ -std=c++20 -O3 -fno-math-errno -static -Wall -Wextra \
        -Wno-unused-parameter -I edge/csrc edge/csrc/tools/bench_main.cpp $runtime \
        -o "$BENCH.tmp" -lpthread || die "cross-compiling llama-edge-bench failed"
    mv "$BENCH.tmp" "$BENCH"
fi

# 6. Launchers. -P: the current directory does not shadow the site (a checkout's edge/ holds
#    no aarch64 kernels).
mkdir -p "$OUT/bin"
cat >"$OUT/bin/python" <<EOF
#!/bin/sh
# Python $PYVER for aarch64 under qemu-user; \$QEMU_CPU selects the emulated CPU.
PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 exec qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python$PYVER" -P "\$@"
EOF
cat >"$OUT/bin/llama-edge" <<EOF
#!/bin/sh
exec "$OUT/bin/python" -m edge.cli "\$@"
EOF
chmod +x "$OUT/bin/python" "$OUT/bin/llama-edge"
isa=$(QEMU_CPU=max "$OUT/bin/python" -c "from edge import _kernels; print(_kernels.best_isa())") \
    || die "the aarch64 runtime does not import"
echo "setup_arm64: ready: $OUT/bin/llama-edge (kernels on QEMU_CPU=max: $isa)" >&2
