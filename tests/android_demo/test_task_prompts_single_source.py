"""The task prompts exist once in the repository: edge/data/tasks.json, which edge/tasks.py
reads and the Android build copies into the app's assets (app/build.gradle.kts). The only other
file that holds them is the generated vectors file, whose prompt strings are made from
tasks.json and checked fresh by test_vectors.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "edge" / "data" / "tasks.json"
GENERATED = {"tests/android_demo/vectors.json"}
# Instruction sentences shorter than this could occur by chance in unrelated text.
MIN_FRAGMENT_CHARS = 30


def repository_files() -> list[str]:
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                       cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in r.stdout.splitlines() if (REPO / f).is_file()]


def prompt_fragments() -> list[str]:
    """Each sentence of the task prompts' literal text (between their {fields}) long enough to
    be their own."""
    spec = json.loads(TASKS.read_text(encoding="utf-8"))
    out = []
    for task in spec["tasks"].values():
        for piece in re.split(r"\{\w+\}", task["prompt"]):
            out += [s for s in re.split(r"(?<=[.!?])\s+", piece.strip())
                    if len(s) >= MIN_FRAGMENT_CHARS]
    return out


def test_task_prompts_exist_once():
    fragments = prompt_fragments()
    assert len(fragments) >= 4
    holders = {f: [] for f in fragments}
    for name in repository_files():
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        # a JSON file may hold the text with its newlines escaped
        for fragment in fragments:
            if fragment in text or json.dumps(fragment)[1:-1] in text:
                holders[fragment].append(name)
    for fragment, names in holders.items():
        assert set(names) - GENERATED == {"edge/data/tasks.json"}, (fragment, names)


def test_the_app_takes_the_prompts_from_edge_data():
    gradle = (REPO / "android_demo" / "app" / "build.gradle.kts").read_text(encoding="utf-8")
    assert '"../edge/data/tasks.json"' in gradle
    assert not list((REPO / "android_demo").rglob("tasks.json"))
