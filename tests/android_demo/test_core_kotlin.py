"""android_demo/core compiled and its JUnit tests run on this machine, without Gradle: the
Kotlin compiler shipped in the PyPI wheel kotlin-jupyter-kernel (with the kotlin-stdlib and
kotlinx-serialization jars it carries), JUnit 4 and Hamcrest from Debian, any Java 17+ runtime.
scripts/setup_android.sh installs them. The JUnit tests read the shared vectors
(tests/android_demo/vectors.json) and the task prompts (edge/data/tasks.json)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "android_demo"
CORE = DEMO / "core" / "src"
KERNEL_WHEEL = "kotlin-jupyter-kernel==0.19.0.944"
DEBIAN_JARS = {"junit4": Path("/usr/share/java/junit4.jar"),
               "libhamcrest-java": Path("/usr/share/java/hamcrest-core.jar")}
# The Kotlin language and API level the Gradle build compiles with (gradle/libs.versions.toml):
# the newer compiler here is held to it, so nothing passes here that Gradle would refuse.
LANGUAGE_VERSION = "2.2"
# JUnit test methods in core/src/test (a run that finds fewer lost some).
MIN_JUNIT_TESTS = 26
COMPILE_TIMEOUT_S = 600


def _need(what: str, how: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: scripts/setup_android.sh must install {how}")
    pytest.skip(f"{what} is not installed ({how}; see scripts/setup_android.sh)")


@pytest.fixture(scope="module")
def toolchain() -> dict:
    spec = importlib.util.find_spec("run_kotlin_kernel")
    if spec is None or not spec.submodule_search_locations:
        _need("the Kotlin compiler", f"pip install --no-deps {KERNEL_WHEEL}")
    jars = Path(next(iter(spec.submodule_search_locations))) / "jars"

    def jar(pattern: str) -> Path:
        found = sorted(jars.glob(pattern))
        if not found:
            _need(f"{pattern} in {jars}", f"pip install --no-deps {KERNEL_WHEEL}")
        return found[0]

    for package, path in DEBIAN_JARS.items():
        if not path.is_file():
            _need(str(path), f"apt-get install {package}")
    java = shutil.which("java")
    if java is None:
        _need("java", "apt-get install default-jre-headless")
    return {"java": java, "compiler": jar("kotlin-jupyter-kernel-*-all.jar"),
            "libs": [jar("kotlin-stdlib-*.jar"), jar("kotlinx-serialization-core-jvm-*.jar"),
                     jar("kotlinx-serialization-json-jvm-*.jar")],
            "junit": list(DEBIAN_JARS.values())}


def _cp(paths) -> str:
    return os.pathsep.join(str(p) for p in paths)


def kotlinc(tc: dict, sources: list[Path], classpath, out: Path) -> None:
    cmd = [tc["java"], "-cp", str(tc["compiler"]), "org.jetbrains.kotlin.cli.jvm.K2JVMCompiler",
           "-no-stdlib", "-no-reflect", "-language-version", LANGUAGE_VERSION,
           "-api-version", LANGUAGE_VERSION, "-jvm-target", "17", "-Werror",
           "-classpath", _cp(classpath), "-d", str(out), *map(str, sources)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=COMPILE_TIMEOUT_S)
    assert r.returncode == 0, f"kotlinc {sources} failed:\n{r.stdout}\n{r.stderr}"


def junit(tc: dict, classpath, classes: list[str]) -> subprocess.CompletedProcess:
    cmd = [tc["java"], f"-Dllamaedge.vectors={REPO / 'tests/android_demo/vectors.json'}",
           f"-Dllamaedge.tasks={REPO / 'edge/data/tasks.json'}", "-cp", _cp(classpath),
           "org.junit.runner.JUnitCore", *classes]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=COMPILE_TIMEOUT_S)


def junit_classes(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out).with_suffix("")).replace(os.sep, ".")
                  for p in out.rglob("*Test.class"))


@pytest.fixture(scope="module")
def compiled(toolchain, tmp_path_factory) -> dict:
    """core's main and test classes, compiled once for this module (one compiler run: its
    start-up is most of the time)."""
    root = tmp_path_factory.mktemp("kotlin")
    kotlinc(toolchain, [CORE / "main" / "kotlin", CORE / "test" / "kotlin"],
            [*toolchain["libs"], *toolchain["junit"]], root / "classes")
    return {"classes": root / "classes", "root": root}


def test_core_junit_tests_pass(toolchain, compiled):
    classes = junit_classes(compiled["classes"])
    assert "org.llamaedge.core.SharedVectorsTest" in classes
    r = junit(toolchain, [*toolchain["libs"], compiled["classes"], *toolchain["junit"]], classes)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    m = re.search(r"^OK \((\d+) tests?\)", r.stdout, re.MULTILINE)
    assert m and int(m[1]) >= MIN_JUNIT_TESTS, r.stdout[-2000:]


def test_a_core_that_lets_special_tokens_through_fails_its_tests(toolchain, compiled):
    """The JUnit run can fail: a core whose neutralization is removed builds other prompt
    strings than the Python side."""
    broken = compiled["root"] / "broken_src"
    shutil.copytree(CORE / "main" / "kotlin", broken)
    builder = next(broken.rglob("PromptBuilder.kt"))
    text = builder.read_text(encoding="utf-8")
    assert ".append(BREAK)" in text
    builder.write_text(text.replace(".append(BREAK)", ""), encoding="utf-8")
    out = compiled["root"] / "broken"
    kotlinc(toolchain, [broken], toolchain["libs"], out)
    # the broken classes come first on the class path and shadow the good ones
    r = junit(toolchain, [*toolchain["libs"], out, compiled["classes"], *toolchain["junit"]],
              ["org.llamaedge.core.SharedVectorsTest"])
    assert r.returncode != 0 and "promptStringsEqualThePythonSide" in r.stdout


def test_core_is_pure_kotlin():
    """No Android or AndroidX import in core/: it builds as a plain JVM library."""
    offenders = [f"{p.relative_to(REPO)}: {line.strip()}"
                 for p in CORE.rglob("*.kt")
                 for line in p.read_text(encoding="utf-8").splitlines()
                 if re.match(r"\s*import\s+(android|androidx|org\.pytorch)\.", line)]
    assert not offenders, offenders


def test_versions_here_match_the_gradle_build(toolchain):
    toml = (DEMO / "gradle" / "libs.versions.toml").read_text(encoding="utf-8")
    versions = dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', toml, re.MULTILINE))
    assert versions["kotlin"].rsplit(".", 1)[0] == LANGUAGE_VERSION
    serialization = next(p for p in toolchain["libs"] if "serialization-json" in p.name)
    assert f"-{versions['kotlinx-serialization']}.jar" in serialization.name
    # Debian names each version's jar beside its junit4.jar
    assert (DEBIAN_JARS["junit4"].parent / f"junit4-{versions['junit']}.jar").exists()
    # the ExecuTorch Android library matches the executorch that writes our .pte
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"executorch=={versions["executorch"]}"' in pyproject


def test_only_the_engine_adapter_touches_llm_module():
    app = DEMO / "app" / "src" / "main" / "kotlin"
    users = sorted(p.name for p in app.rglob("*.kt")
                   if re.search(r"^import org\.pytorch\.", p.read_text(encoding="utf-8"), re.MULTILINE))
    assert users == ["ExecuTorchEngine.kt"]
