"""Fidelity of a task's output: how far a quantized artifact's summary or rewrite drifts from the
float model's, and whether the facts of the input survive.

- `rouge_l(candidate, reference)`: ROUGE-L F1 (rouge-score, stemmed) of an artifact's text
  against the float model's text for the same input.
- `token_match(a, b)`: the share of greedy tokens equal position by position, up to the shorter
  sequence's length and counting the length difference as mismatches.
- `facts(text)`: the numbers and names a text states. Numbers keep their scale word
  ("2.4 million", "11-kilometre" -> "11"), so "2.4 million" and "3.5million" differ; names are
  runs of capitalized words that do not start a sentence, plus capitalized words the text uses
  more than once anywhere.
- `kept(source, output)`: (recall, precision) over facts: the share of the source's facts the
  output states unchanged, and the share of the output's facts found in the source (a fact the
  input never stated, such as a changed amount, lowers it).
"""

from __future__ import annotations

import re
from collections import Counter

SCALE_WORDS = ("thousand", "million", "billion", "trillion", "percent", "per cent")
_NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:\s*(" + "|".join(SCALE_WORDS) + r"))?",
    re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_SENTENCE_END = re.compile(r"[.!?:;\"]|\n\s*\n|^\s*[-*\d]")  # in the gap before a word
# Capitalized words that are not names wherever they stand.
_NOT_NAMES = {"I", "A", "The", "This", "That", "These", "Those", "It", "Its", "In", "On", "At",
              "For", "But", "And", "Or", "If", "When", "Some", "Under", "Work", "Supporters",
              "Summary", "Here", "There", "They", "We", "You", "He", "She", "Our", "Their",
              "Rewrite", "Text", "As", "By", "With", "From", "To", "Of", "After", "Before"}


def numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(text):
        whole, frac, scale = m.group(1).replace(",", ""), m.group(2), m.group(3)
        s = whole + (f".{frac}" if frac else "")
        out.append(f"{s} {scale.lower()}" if scale else s)
    return out


def names(text: str) -> list[str]:
    words = list(_WORD.finditer(text))
    caps_anywhere = Counter(w.group() for w in words if w.group()[0].isupper())
    out, run = [], []

    def flush():
        if run:
            out.append(" ".join(run))
            run.clear()

    for i, w in enumerate(words):
        s = w.group()
        starts_sentence = i == 0 or bool(_SENTENCE_END.search(text[words[i - 1].end():w.start()]))
        is_name = (s[0].isupper() and s not in _NOT_NAMES
                   and (not starts_sentence or caps_anywhere[s] > 1 or bool(run)))
        gap = text[words[i - 1].end():w.start()] if i else ""
        if is_name and run and gap.strip() == "":
            run.append(s)
        elif is_name:
            flush()
            run.append(s)
        else:
            flush()
    flush()
    return out


def facts(text: str) -> set[str]:
    return set(numbers(text)) | set(names(text))


def _words(text: str) -> set[str]:
    return {w.group().lower() for w in _WORD.finditer(text)}


def kept(source: str, output: str) -> tuple[float, float]:
    """(recall, precision) of the output's facts against the source's (1.0 where there are
    none to count). Numbers must match exactly (value and scale word); a name counts as kept
    when the output uses it as a word, and an output name counts as found when each of its
    words occurs in the source."""
    src_nums, out_nums = set(numbers(source)), set(numbers(output))
    src_names = set(names(source))
    out_words = {w.group() for w in _WORD.finditer(output)}
    out_names = set(names(output)) | {n for n in src_names if n in out_words}
    src_words = _words(source)
    kept_names = {n for n in src_names if all(w in out_words for w in n.split())}
    n_src = len(src_nums) + len(src_names)
    recall = (len(src_nums & out_nums) + len(kept_names)) / n_src if n_src else 1.0
    found = len(out_nums & src_nums) + sum(
        all(w.lower() in src_words for w in n.split()) for n in out_names)
    n_out = len(out_nums) + len(out_names)
    precision = found / n_out if n_out else 1.0
    return recall, precision


def token_match(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b)) / n


def rouge_l(candidate: str, reference: str) -> float:
    if candidate == reference:  # also where neither has a word ROUGE would count
        return 1.0
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise SystemExit("ROUGE-L needs the rouge-score package: pip install "
                         "'llama-edge[bench]'") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(reference, candidate)["rougeL"].fmeasure
