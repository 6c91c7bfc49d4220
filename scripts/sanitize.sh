#!/usr/bin/env bash
# The C++ kernels under sanitizers (CI runs this after the test suite, see .ci/run):
#   address: AddressSanitizer + UndefinedBehaviorSanitizer (any report aborts): the kernel
#            parity program (every SIMD set this CPU runs against the scalar reference) and
#            the multi-session driver (tests/sanitize/drive.py) on the Python runtime
#   thread:  ThreadSanitizer: the multi-session driver (several sessions of one model decoding
#            at once, the model's thread pool inside each pass)
# Usage: scripts/sanitize.sh [address|thread ...]   (default: both). Builds in build/sanitize/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CXX=${CXX:-g++}
OUT=build/sanitize
KINDS=("$@")
[ ${#KINDS[@]} -eq 0 ] && KINDS=(address thread)
SRC=edge/csrc
# under $SRC: the kernel tier and the runtime's forward pass (the extension adds its bindings)
LIB_SOURCES="kernels/scalar/reference.cpp kernels/x86/avx2.cpp kernels/x86/avx512.cpp
             kernels/arm/kernels_neon.cpp
             kernels/acts.cpp kernels/dispatch.cpp runtime/model.cpp"
PARITY=tools/parity_main.cpp
BINDINGS=runtime/bindings.cpp
EXT=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
PYBIND=$("$PY" -m pybind11 --includes)

obj() {  # obj DIR SOURCE: the object file of SOURCE (a path under $SRC) in DIR
    local f=${2%.cpp}
    echo "$1/${f//\//_}.o"
}

build() {  # build KIND: objects in parallel, then the parity program and the extension
    local kind=$1 flags dir=$OUT/$1
    case $kind in
        address) flags="-fsanitize=address,undefined -fno-sanitize-recover=all" ;;
        thread) flags="-fsanitize=thread" ;;
        *) echo "sanitize.sh: unknown sanitizer '$kind' (address or thread)" >&2; exit 2 ;;
    esac
    flags="$flags -O1 -g -fno-omit-frame-pointer -fPIC -std=c++20 -I$SRC"
    mkdir -p "$dir"
    local jobs=()
    for f in $LIB_SOURCES $PARITY $BINDINGS; do
        local o; o=$(obj "$dir" "$f")
        if [ ! -f "$o" ] || [ -n "$(find $SRC -newer "$o" -print -quit)" ]; then
            # shellcheck disable=SC2086
            $CXX $flags $PYBIND -c "$SRC/$f" -o "$o" & jobs+=($!)
            if [ ${#jobs[@]} -ge 2 ]; then wait "${jobs[0]}"; jobs=("${jobs[@]:1}"); fi
        fi
    done
    for j in "${jobs[@]}"; do wait "$j"; done
    local objs=""
    for f in $LIB_SOURCES; do objs="$objs $(obj "$dir" "$f")"; done
    # shellcheck disable=SC2086
    $CXX $flags "$(obj "$dir" $PARITY)" $objs -o "$dir/parity_main" -lpthread
    # shellcheck disable=SC2086
    $CXX $flags -shared "$(obj "$dir" $BINDINGS)" $objs -o "$dir/_kernels$EXT" -lpthread
}

for kind in "${KINDS[@]}"; do
    echo "== $kind: building"
    build "$kind"
    rt=$($CXX -print-file-name=lib${kind/address/asan}.so)
    [ "$kind" = thread ] && rt=$($CXX -print-file-name=libtsan.so)
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
    if [ "$kind" = address ]; then
        echo "== $kind: kernel parity"
        "$OUT/$kind/parity_main" | tail -1
    fi
    echo "== $kind: multi-session driver"
    LD_PRELOAD=$rt "$PY" tests/sanitize/drive.py "$OUT/$kind/_kernels$EXT"
done
echo "SANITIZERS CLEAN: ${KINDS[*]}"
