"""The native-log holder: native-format lines are kept back, everything else reaches stderr."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys
    from edge.nativelog import native_log_held
    with native_log_held() as log:
        os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 2 threads.\\n")
        os.write(2, b"I 00:00:00.001234 executorch:program.cpp:87] loaded\\n")
        print("a python warning", file=sys.stderr)
        with native_log_held():  # nested blocks share the outer hold
            os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/x\\n")
        os.write(2, b"plain native text\\n")
    print(len(log.lines), log.tail(1))
    os.write(2, b"[after.cpp:1] not held\\n")
""")


def test_native_lines_are_held_and_the_rest_is_written_back():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "[cpuinfo_utils.cpp:71]", "Reading", "file", "/sys/x"]
    assert r.stderr.splitlines() == ["a python warning", "plain native text",
                                     "[after.cpp:1] not held"]
