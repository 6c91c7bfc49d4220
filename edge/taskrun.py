"""Running a task (summarize / rewrite) over a document of any length: split it into pieces that
fit the context, run each through the model with speculation and the prefix cache, combine.
The CLI, the server and the benchmarks all call `TaskRunner.run` (prompts: edge/tasks.py)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .errors import GenerationError, InputError
from .generate import Generation
from .prefix import PrefixCache, common_prefix
from .sampling import SamplingParams
from .tasks import (MAX_INPUT_TOKENS, TASKS, check_style, merge_messages, piece_tokens,
                    rewrite_messages, summarize_messages, task_defaults)

# Tokens the rendered prompt may exceed the sum of its parts by (a merge across the boundary
# between the instruction and the document); pieces are checked once rendered anyway.
PROMPT_SLACK = 8
# A rewrite is about as long as its input: a piece's output budget is this multiple of its
# tokens, plus a margin, within the task's max_new_tokens.
REWRITE_OUTPUT_RATIO = 1.5
REWRITE_OUTPUT_MARGIN = 32
# A piece with less document than this is not worth a model call.
MIN_PIECE_TOKENS = 16
# The shortest summary of a piece asked for when several pieces are summarized.
MIN_SUMMARY_TOKENS = 32
# Rounds of summarizing summaries before giving up (each must shrink the text).
MAX_MERGE_LEVELS = 6
_SENTENCE_END = re.compile(r"(?<=[.!?;:…。！？])\s+")
_PARAGRAPH = re.compile(r"\n[ \t]*\n+")


@dataclass
class Piece:
    """One model call of a task."""

    index: int
    level: int  # 0: the document's pieces; n: summaries of level n - 1
    input_tokens: int  # document (or summaries) tokens in this piece
    prompt_tokens: int
    generated_tokens: int
    prefix_cached_tokens: int
    finish_reason: str
    ttft_s: float
    decode_s: float
    seconds: float
    speculative: dict | None = None


@dataclass
class TaskResult:
    text: str
    task: str
    input_tokens: int
    pieces: list[Piece] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(p.prompt_tokens for p in self.pieces)

    @property
    def generated_tokens(self) -> int:
        return sum(p.generated_tokens for p in self.pieces)

    def to_json(self) -> dict:
        pieces = [asdict(p) for p in self.pieces]
        pre = sum(p.ttft_s for p in self.pieces)
        dec = sum(p.decode_s for p in self.pieces)
        steps = sum(max(p.generated_tokens - 1, 0) for p in self.pieces)
        drafted = sum((p.speculative or {}).get("drafted_tokens", 0) for p in self.pieces)
        accepted = sum((p.speculative or {}).get("accepted_tokens", 0) for p in self.pieces)
        return {"text": self.text, "task": self.task, "input_tokens": self.input_tokens,
                "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "finish_reason": self.pieces[-1].finish_reason if self.pieces else "length",
                "prefill_tok_s": round(self.prompt_tokens / pre, 2) if pre > 0 else 0.0,
                "decode_tok_s": round(steps / dec, 2) if dec > 0 and steps else 0.0,
                "ttft_s": round(self.pieces[0].ttft_s, 4) if self.pieces else 0.0,
                "wall_s": round(self.seconds, 3), "n_pieces": len(self.pieces),
                "levels": 1 + max((p.level for p in self.pieces), default=0),
                "prefix_cached_tokens": sum(p.prefix_cached_tokens for p in self.pieces),
                "speculative": {"drafted_tokens": drafted, "accepted_tokens": accepted,
                                "acceptance_rate": round(accepted / drafted, 4) if drafted
                                else 0.0},
                "pieces": pieces}


def split_units(text: str) -> list[str]:
    """Paragraphs (blank-line separated), stripped, empty ones dropped."""
    return [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]


def _atoms(unit: str, count, budget: int, level: int = 0) -> list[str]:
    """`unit` cut into parts each within `budget` tokens: sentences, then words, then
    characters (for a "word" longer than the budget)."""
    n = count(unit)
    if n <= budget:
        return [unit]
    if level >= 2:
        step = max(1, len(unit) * budget // (n + 1))
        return [unit[i:i + step] for i in range(0, len(unit), step)]
    parts = _SENTENCE_END.split(unit) if level == 0 else unit.split()
    if len(parts) <= 1:
        return _atoms(unit, count, budget, level + 1)
    return [a for p in parts for a in _atoms(p, count, budget, level + 1)]


def split_document(text: str, count: Callable[[str], int], budget: int) -> list[str]:
    """`text` in pieces of at most `budget` tokens (by `count`), cut at paragraph boundaries,
    or sentences, words and finally characters where a unit alone is too long. Pieces are
    filled greedily in order; nothing is dropped (joining the pieces gives the text back up to
    the whitespace at the cuts)."""
    if budget < 1:
        raise InputError(f"no room for any document text (budget {budget} tokens)")
    units: list[tuple[str, str]] = []  # (separator before it, text)
    for para in split_units(text):
        for i, a in enumerate(_atoms(para, count, budget)):
            units.append(("\n\n" if i == 0 else " ", a))
    pieces: list[list[tuple[str, str]]] = [[]]
    used = 0
    for sep, a in units:
        n = count(a) + (1 if sep == "\n\n" else 0)  # a paragraph break costs a token, about
        if pieces[-1] and used + n > budget:
            pieces.append([])
            used = 0
        pieces[-1].append((sep, a))
        used += n

    def render(part):
        return "".join((sep if i else "") + a for i, (sep, a) in enumerate(part))

    out: list[str] = []
    while pieces:  # a piece the estimate let through over budget is halved
        part = pieces.pop(0)
        piece = render(part)
        if len(part) > 1 and count(piece) > budget:
            half = len(part) // 2
            pieces[:0] = [part[:half], part[half:]]
            continue
        out.append(piece)
    return [p for p in out if p]


class TaskRunner:
    """Tasks on one loaded engine. A runner keeps one drafter and one prefix cache (the cache
    may be shared by several runners: it is thread-safe) and runs one request at a time, on its
    own session or on one given per request (the server's)."""

    def __init__(self, engine, speculative: str = "lookup", open_draft=None,
                 prefix: PrefixCache | None = None, session=None):
        from .chat import detect_chat_format
        from .speculative import make_drafter

        if engine.tokenizer is None:
            raise GenerationError("the model has no tokenizer, so it cannot run tasks")
        self.engine, self.tok = engine, engine.tokenizer
        self.fmt = engine.chat_format or detect_chat_format(self.tok)
        self.drafter = make_drafter(speculative, open_draft)
        self.prefix = prefix if prefix is not None else PrefixCache()
        self.session = session if session is not None else engine.session()

    # ------------------------------------------------------------------ prompts
    def _ids(self, messages) -> list[int]:
        from .chat import encode_chat

        return encode_chat(self.tok, messages, self.fmt)

    def _messages(self, task: str, style: str | None):
        if task == "rewrite":
            return lambda text: rewrite_messages(text, style)
        return summarize_messages if task == "summarize" else merge_messages

    def _budget(self, build, max_new: int, cap: int) -> int:
        """Document tokens a piece may have so that prompt + output fits the session."""
        overhead = len(self._ids(build(""))) + PROMPT_SLACK
        budget = min(cap, self.session.max_context - overhead - max_new)
        if budget < MIN_PIECE_TOKENS:
            raise InputError(f"the context of {self.session.max_context} tokens leaves "
                                  f"{max(budget, 0)} for the document after the task's prompt "
                                  f"({overhead}) and output ({max_new}); raise --ctx or lower "
                                  "--max-new-tokens")
        return budget

    def count(self, text: str) -> int:
        return len(self.tok.encode(text))

    def check(self, task: str, text: str, style: str | None, max_input: int) -> tuple[str, int]:
        """The request's text (stripped) and its tokens, or a GenerationError: unknown task,
        bad style, empty input, more tokens than max_input."""
        if task not in TASKS:
            raise GenerationError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task == "rewrite":
            check_style(style)
        if isinstance(max_input, bool) or not isinstance(max_input, int) or max_input < 1:
            raise GenerationError(f"--max-input must be a positive number of tokens, got "
                                  f"{max_input!r}")
        text = text.strip()
        if not text:
            raise InputError("the input is empty")
        n_in = self.count(text)
        if n_in > max_input:
            raise InputError(f"the input has {n_in} tokens, more than --max-input "
                                  f"{max_input}; raise --max-input or shorten the document")
        return text, n_in

    # ------------------------------------------------------------------ running
    def _call(self, build, text: str, params: SamplingParams, level: int, index: int,
              stream: bool, pieces: list):
        """One model call; yields its text when `stream`; returns the output (stripped)."""
        ids = self._ids(build(text))
        fixed = common_prefix(ids, self._ids(build("")))
        t0 = time.perf_counter()
        gen = Generation(self.session, self.tok, ids, params, self.engine.eos_ids,
                         drafter=self.drafter, prefix=self.prefix, fixed=fixed)
        for chunk in gen:
            if stream:
                yield chunk
        r = gen.result
        pieces.append(Piece(index, level, self.count(text), r.prompt_tokens, r.generated_tokens,
                            r.extra.get("prefix_cached_tokens", 0), r.finish_reason,
                            round(r.prefill_s, 4), round(r.decode_s, 4),
                            round(time.perf_counter() - t0, 4), r.extra.get("speculative")))
        return r.text.strip()

    def stream(self, task: str, text: str, params: SamplingParams | None = None,
               style: str | None = None, max_input: int = MAX_INPUT_TOKENS,
               progress=None) -> "TaskStream":
        """An iterable over the final output's text as it is generated (every piece of a
        rewrite; the last summary of a summarize); its `result` (TaskResult) is set at the end.
        params: the decoding parameters (the task's defaults when None); progress(done, total,
        label): after each model call."""
        text, n_in = self.check(task, text, style, max_input)
        params = (params or SamplingParams(**task_defaults(task))).validate()
        return TaskStream(self, task, text, n_in, params, style, progress)

    def run(self, task: str, text: str, params: SamplingParams | None = None,
            style: str | None = None, max_input: int = MAX_INPUT_TOKENS, progress=None,
            on_text=None) -> TaskResult:
        """`stream`, consumed: on_text(chunk) gets the streamed text."""
        st = self.stream(task, text, params, style, max_input, progress)
        for chunk in st:
            if on_text is not None:
                on_text(chunk)
        return st.result

    def _rewrite(self, build, text, params, result, progress):
        budget = self._budget(build, params.max_new_tokens, piece_tokens("rewrite"))
        # each piece's output gets room in proportion to its length
        per_token = REWRITE_OUTPUT_RATIO
        budget = min(budget, int((self.session.max_context - len(self._ids(build("")))
                                  - PROMPT_SLACK - REWRITE_OUTPUT_MARGIN) / (1 + per_token)))
        pieces = split_document(text, self.count, budget)
        outs = []
        for i, piece in enumerate(pieces):
            n = self.count(piece)
            cap = min(params.max_new_tokens, int(per_token * n) + REWRITE_OUTPUT_MARGIN)
            if i:
                yield "\n\n"
            outs.append((yield from self._call(build, piece, _with_max(params, cap), 0, i,
                                               True, result.pieces)))
            if progress:
                progress(i + 1, len(pieces), "rewrite")
        return "\n\n".join(outs)

    def _summarize(self, text, params, result, progress):
        level, index = 0, 0
        build = summarize_messages
        while True:
            budget = self._budget(build, params.max_new_tokens, piece_tokens("summarize"))
            pieces = split_document(text, self.count, budget)
            last = len(pieces) == 1
            # summaries of several pieces may take at most half their input together, so that
            # every level shrinks the text
            level_params = params if last else _with_max(params, min(
                params.max_new_tokens,
                max(MIN_SUMMARY_TOKENS, self.count(text) // (2 * len(pieces)))))
            summaries = []
            for piece in pieces:
                summaries.append((yield from self._call(build, piece, level_params, level, index,
                                                        last, result.pieces)))
                index += 1
                if progress:
                    progress(index, index + (0 if last else 1), f"summarize (level {level})")
            if last:
                return summaries[0]
            merged = "\n\n".join(summaries)
            if level + 1 >= MAX_MERGE_LEVELS or self.count(merged) >= self.count(text):
                raise InputError(f"the summaries of {len(pieces)} pieces do not get "
                                      "shorter than their input; raise --ctx or shorten the "
                                      "document")
            text, build, level = merged, merge_messages, level + 1


class TaskStream:
    """Iterate for the text of a task's final output; `result` is set once it ends."""

    def __init__(self, runner: TaskRunner, task, text, n_in, params, style, progress):
        self.runner, self.task, self.text, self.params = runner, task, text, params
        self.style, self.progress = style, progress
        self.result = None
        self._n_in = n_in

    def __iter__(self):
        r = self.runner
        t0 = time.perf_counter()
        result = TaskResult("", self.task, self._n_in)
        if self.task == "rewrite":
            gen = r._rewrite(r._messages("rewrite", self.style), self.text, self.params, result,
                             self.progress)
        else:
            gen = r._summarize(self.text, self.params, result, self.progress)
        result.text = yield from gen
        result.seconds = time.perf_counter() - t0
        self.result = result


def _with_max(params: SamplingParams, n: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, max_new_tokens=max(1, n))
