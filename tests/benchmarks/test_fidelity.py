"""The task benchmark's fidelity measures (benchmarks/fidelity.py) on texts whose facts are
known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity

SOURCE = ("The town of Harwick voted on Tuesday to spend 2.4 million pounds on a path. The line "
          "closed in 1987. Supporters say the 11-kilometre path along the river Elm will help.")


def test_facts_of_a_text():
    assert fidelity.facts(SOURCE) == {"2.4 million", "1987", "11", "Harwick", "Tuesday", "Elm"}


def test_numbers_keep_their_scale_and_drop_separators():
    assert fidelity.numbers("It cost 3.5million, then 1,200 people and 40 percent.") == [
        "3.5 million", "1200", "40 percent"]


def test_a_changed_amount_lowers_both_shares():
    faithful = "Harwick will spend 2.4 million pounds on an 11-kilometre path by the Elm."
    changed = "Harwick will spend £3.5million dollars on an 11-kilometre path by the Elm."
    r1, p1 = fidelity.kept(SOURCE, faithful)
    r2, p2 = fidelity.kept(SOURCE, changed)
    assert (r1, p1) == (pytest.approx(4 / 6), 1.0)
    assert r2 == pytest.approx(3 / 6) and p2 == pytest.approx(3 / 4)


def test_the_source_keeps_everything_and_nothing_keeps_nothing():
    assert fidelity.kept(SOURCE, SOURCE) == (1.0, 1.0)
    assert fidelity.kept(SOURCE, "A short note.") == (0.0, 1.0)


def test_token_match_counts_length_difference():
    assert fidelity.token_match([1, 2, 3, 4], [1, 2, 9]) == 0.5
    assert fidelity.token_match([], []) == 1.0


def test_rouge_l():
    pytest.importorskip("rouge_score")
    assert fidelity.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert 0.5 < fidelity.rouge_l("the cat is on the mat", "the cat sat on the mat") < 1.0
