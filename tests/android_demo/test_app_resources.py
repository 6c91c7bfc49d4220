"""android_demo/app's resources and manifest, checked as the Android build checks them: compiled
and linked with aapt2 (Debian's `aapt`) against the platform's framework resources (Debian's
`android-framework-res`, API 29; the app uses nothing newer). A reference to a missing resource
or attribute fails the link; every R.<type>.<name> the Kotlin code uses must be in the R.java
the link writes; every activity in the manifest must be a class of the app."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "android_demo" / "app"
MAIN = APP / "src" / "main"
FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")
# The SDK levels of app/build.gradle.kts (minSdk / targetSdk).
MIN_SDK, TARGET_SDK = 28, 35
AAPT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def aapt2() -> str:
    tool = shutil.which("aapt2")
    missing = [what for what, ok in (("aapt2 (apt-get install aapt)", tool),
                                     (f"{FRAMEWORK_RES} (apt-get install android-framework-res)",
                                      FRAMEWORK_RES.is_file())) if not ok]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing in CI: {', '.join(missing)}; scripts/setup_android.sh installs "
                        "them")
        pytest.skip(f"not installed: {', '.join(missing)} (see scripts/setup_android.sh)")
    return tool


def namespace() -> str:
    m = re.search(r'namespace\s*=\s*"([\w.]+)"', (APP / "build.gradle.kts").read_text())
    assert m, "app/build.gradle.kts has no namespace"
    return m[1]


def link(aapt2: str, res: Path, manifest: Path, work: Path) -> subprocess.CompletedProcess:
    """aapt2 compile + link as the Android Gradle plugin runs them: the manifest gets the
    package from `namespace` (AGP's manifest merger does the same); R.java goes to work/gen."""
    work.mkdir(parents=True, exist_ok=True)
    flat = work / "res.zip"
    r = subprocess.run([aapt2, "compile", "--dir", str(res), "-o", str(flat)],
                       capture_output=True, text=True, check=False, timeout=AAPT_TIMEOUT_S)
    if r.returncode != 0:
        return r
    text = manifest.read_text(encoding="utf-8")
    assert "package=" not in text, "the package comes from namespace in app/build.gradle.kts"
    merged = work / "AndroidManifest.xml"
    merged.write_text(re.sub(r"<manifest\b", f'<manifest package="{namespace()}"', text, count=1),
                      encoding="utf-8")
    return subprocess.run(
        [aapt2, "link", "-I", str(FRAMEWORK_RES), "--manifest", str(merged),
         "--min-sdk-version", str(MIN_SDK), "--target-sdk-version", str(TARGET_SDK),
         "--version-code", "1", "--version-name", "0.1", "--java", str(work / "gen"),
         "-o", str(work / "app.apk"), str(flat)],
        capture_output=True, text=True, check=False, timeout=AAPT_TIMEOUT_S)


def r_symbols(gen: Path) -> set[tuple[str, str]]:
    """(type, name) of every field in the generated R.java."""
    text = next(gen.rglob("R.java")).read_text(encoding="utf-8")
    out, kind = set(), None
    for line in text.splitlines():
        m = re.match(r"\s*public static final class (\w+)", line)
        if m:
            kind = m[1]
        m = re.match(r"\s*public static final int (?:\[\] )?(\w+)\s*=", line)
        if m and kind:
            out.add((kind, m[1]))
    return out


def code_references(sources) -> set[tuple[str, str]]:
    """R.<type>.<name> used by Kotlin sources (the app's own R, not android.R)."""
    refs = set()
    for text in sources:
        refs |= set(re.findall(r"(?<![\w.])R\.(\w+)\.(\w+)", text))
    return refs


def _kotlin_sources() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in (MAIN / "kotlin").rglob("*.kt")]


def test_resources_and_manifest_link(aapt2, tmp_path):
    r = link(aapt2, MAIN / "res", MAIN / "AndroidManifest.xml", tmp_path)
    assert r.returncode == 0, r.stderr
    symbols = r_symbols(tmp_path / "gen")
    refs = code_references(_kotlin_sources())
    assert refs and not refs - symbols, sorted(refs - symbols)
    # every activity the manifest names is a class of the app
    manifest = (MAIN / "AndroidManifest.xml").read_text(encoding="utf-8")
    classes = {m for text in _kotlin_sources() for m in re.findall(r"^class (\w+)\b", text, re.MULTILINE)}
    activities = re.findall(r'<activity[^>]*android:name="\.(\w+)"', manifest, re.DOTALL)
    assert activities and set(activities) <= classes, (activities, classes)


@pytest.mark.parametrize("where, old, new, missing", [
    ("res/layout/activity_main.xml", "@string/generate", "@string/generate_now", "generate_now"),
    ("res/layout/activity_settings.xml", "@dimen/gap", "@dimen/gap_wide", "gap_wide"),
    ("res/layout/activity_main.xml", 'android:minLines="5"', 'android:minLinez="5"', "minLinez"),
    ("AndroidManifest.xml", "@string/settings_title", "@string/settings_name", "settings_name"),
])
def test_a_broken_reference_fails_the_link(aapt2, tmp_path, where, old, new, missing):
    copy = tmp_path / "main"
    shutil.copytree(MAIN / "res", copy / "res")
    shutil.copy(MAIN / "AndroidManifest.xml", copy / "AndroidManifest.xml")
    target = copy / where
    text = target.read_text(encoding="utf-8")
    assert old in text
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    r = link(aapt2, copy / "res", copy / "AndroidManifest.xml", tmp_path / "out")
    assert r.returncode != 0 and missing in r.stderr, r.stderr


def test_a_code_reference_to_a_missing_resource_is_found(aapt2, tmp_path):
    r = link(aapt2, MAIN / "res", MAIN / "AndroidManifest.xml", tmp_path)
    assert r.returncode == 0, r.stderr
    symbols = r_symbols(tmp_path / "gen")
    broken = code_references(["findViewById<View>(R.id.input); getString(R.string.no_such)",
                              "android.R.layout.simple_spinner_item"])
    assert broken - symbols == {("string", "no_such")}
