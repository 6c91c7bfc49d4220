"""From a validated request to work for a session: the prompt's token ids, the sampling
parameters, and how to start the generation once a session is free.

Prompts are built before a request waits for a session, so that a prompt longer than the
context is refused at once (400, context_length_exceeded) and never holds a session. Chat
messages go through the model's chat format (edge.chat.encode_chat: scaffolding tokens as ids,
message text tokenized apart from them, so text that spells a special token stays text);
completion prompts are tokenized as plain text, as `llama-edge run --raw` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from ..chat import detect_chat_format, encode_chat
from ..errors import EdgeError
from ..generate import Generation, GenerationResult
from ..prefix import PrefixCache, common_prefix
from ..sampling import SamplingParams
from ..tasks import MAX_INPUT_TOKENS, task_defaults
from .errors import APIError, bad_request
from .schemas import ChatRequest, CompletionRequest, Sampling, TaskRequest

# Used when the artifact carries no generation defaults.
FALLBACK_DEFAULTS = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                     "max_new_tokens": 256}


class Stream(Protocol):
    """What a job's start() returns: text chunks while iterated, `result` once finished. The
    server stops it by making the session's next prefill / decode raise; the stream must leave
    its session reset when that happens (edge.generate.Generation does)."""
    result: GenerationResult | None

    def __iter__(self) -> Iterator[str]: ...


@dataclass
class Job:
    prompt_tokens: int
    max_new_tokens: int
    start: Callable[[object], Stream]  # session -> stream; runs in a worker thread


class ServedModel:
    """The loaded engine and what requests need from it: the id clients name it by, its chat
    format, the context of each session, the limit on max_tokens and the decoding defaults."""

    def __init__(self, engine, model_id: str, ctx: int, max_tokens: int | None, created: int,
                 max_input: int = MAX_INPUT_TOKENS):
        self.engine, self.id, self.ctx, self.created = engine, model_id, ctx, created
        self.max_input = max_input
        self.tokenizer = engine.tokenizer
        self.chat_format = engine.chat_format or detect_chat_format(self.tokenizer)
        self.max_tokens = min(max_tokens or ctx, ctx)
        self.defaults = dict(FALLBACK_DEFAULTS, **engine.generation)
        # the prompts' fixed parts (task instruction, chat scaffolding), shared by all sessions
        self.prefix = PrefixCache()

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.id:
            raise APIError(404, f"The model '{name}' does not exist; this server serves "
                                f"'{self.id}' (GET /v1/models)", "model_not_found", "model")

    def generation(self, ids: list[int], params: SamplingParams,
                   fixed: int = 0) -> Callable[[object], Stream]:
        """fixed: the prompt's first tokens that other requests share (system turn), kept in
        the prefix cache."""
        engine = self.engine
        return lambda session: Generation(session, self.tokenizer, ids, params, engine.eos_ids,
                                          prefix=self.prefix, fixed=fixed)


def _budget(model: ServedModel, prompt: int, requested: int | None, default: int,
            what: str, cut_default: bool = True) -> int:
    """max_new_tokens for a prompt of `prompt` tokens: the request's, checked; else the default,
    cut to what the context leaves (chat, completions: OpenAI's default is the rest of the
    context) or required to fit (tasks, as the CLI requires it)."""
    asks = "max_tokens asks for"
    if requested is None and not cut_default:
        requested, asks = min(default, model.max_tokens), "the task's default output is"
    if requested is not None:
        if requested > model.max_tokens:
            raise bad_request(f"max_tokens {requested} is above this server's limit of "
                              f"{model.max_tokens}", "max_tokens")
        if prompt + requested > model.ctx:
            raise bad_request(f"the {what} has {prompt} tokens and {asks} {requested}: "
                              f"{prompt + requested} exceeds the context of {model.ctx} "
                              f"tokens; shorten the {what} or lower max_tokens", what,
                              "context_length_exceeded")
        return requested
    room = model.ctx - prompt
    if room < 1:
        raise bad_request(f"the {what} has {prompt} tokens, which leaves no room in the context "
                          f"of {model.ctx} tokens; shorten the {what}", what,
                          "context_length_exceeded")
    return min(default, model.max_tokens, room)


def _params(s: Sampling, defaults: dict, max_new: int) -> SamplingParams:
    def pick(v, key):
        return v if v is not None else defaults[key]

    try:
        return SamplingParams(
            max_new_tokens=max_new, temperature=float(pick(s.temperature, "temperature")),
            top_p=float(pick(s.top_p, "top_p")), top_k=int(pick(s.top_k, "top_k")),
            repetition_penalty=float(pick(s.repetition_penalty, "repetition_penalty")),
            seed=s.seed, stop=s.stop).validate()
    except EdgeError as e:  # the schema's ranges are narrower; this is the sampler's own word
        raise bad_request(str(e)) from None


def chat_job(model: ServedModel, req: ChatRequest) -> Job:
    try:
        ids = encode_chat(model.tokenizer, req.messages, model.chat_format)
    except EdgeError as e:
        raise bad_request(str(e), "messages") from None
    n = _budget(model, len(ids), req.sampling.max_tokens, model.defaults["max_new_tokens"],
                "messages")
    params = _params(req.sampling, model.defaults, n)
    # what precedes the last message's text is shared with other requests of the same system
    # prompt and history
    last = dict(req.messages[-1], content="")
    fixed = common_prefix(ids, encode_chat(model.tokenizer, [*req.messages[:-1], last],
                                           model.chat_format))
    return Job(len(ids), n, model.generation(ids, params, fixed))


def completion_job(model: ServedModel, req: CompletionRequest) -> Job:
    tok = model.tokenizer
    if isinstance(req.prompt, str):
        bos = [tok.bos_id] if tok.bos_id is not None and tok.add_bos else []
        ids = bos + tok.encode(req.prompt)
    else:
        ids = list(req.prompt)
        bad = next((i for i, t in enumerate(ids) if not 0 <= t < tok.vocab_size), None)
        if bad is not None:
            raise bad_request(f"prompt[{bad}] = {ids[bad]} is not a token id of this model "
                              f"(0..{tok.vocab_size - 1})", "prompt")
    if not ids:
        raise bad_request("prompt is empty", "prompt")
    n = _budget(model, len(ids), req.sampling.max_tokens, model.defaults["max_new_tokens"],
                "prompt")
    params = _params(req.sampling, model.defaults, n)
    return Job(len(ids), n, model.generation(ids, params))


class _TaskStream:
    """A task run (edge.taskrun) as the server's Stream: the final output's text as it is
    generated, and a GenerationResult totalling its model calls."""

    def __init__(self, stream):
        self._stream, self.result = stream, None

    def __iter__(self):
        yield from self._stream
        t = self._stream.result
        d = t.to_json()
        pre = sum(p.ttft_s for p in t.pieces)
        dec = sum(p.decode_s for p in t.pieces)
        self.result = GenerationResult(
            t.text, [], t.prompt_tokens, t.generated_tokens, d["finish_reason"], pre, dec,
            {"pieces": d["n_pieces"], "input_tokens": t.input_tokens,
             "prefix_cached_tokens": d["prefix_cached_tokens"],
             "speculative": d["speculative"]})


def task_job(model: ServedModel, req: TaskRequest) -> Job:
    """The server's one call into the task layer: a summarize / rewrite request runs through
    edge.taskrun.TaskRunner, as `llama-edge summarize` / `rewrite` do (the same prompts, styles
    and decoding defaults, documents longer than the context in pieces, prompt-lookup
    speculation, the model's shared prefix cache)."""
    from ..taskrun import TaskRunner

    defaults = task_defaults(req.task)
    n = req.sampling.max_tokens
    if n is None:
        n = min(defaults["max_new_tokens"], model.max_tokens)
    elif n > model.max_tokens:
        raise bad_request(f"max_tokens {n} is above this server's limit of {model.max_tokens}",
                          "max_tokens")
    params = _params(req.sampling, defaults, n)
    try:  # the request's own checks (style, empty text, input cap) before it waits
        checker = TaskRunner(model.engine, "off", prefix=model.prefix, session=_NoSession)
        text, n_in = checker.check(req.task, req.text, req.style, model.max_input)
    except EdgeError as e:
        raise bad_request(str(e), "text") from None

    def start(session):
        runner = TaskRunner(model.engine, "lookup", prefix=model.prefix, session=session)
        return _TaskStream(runner.stream(req.task, text, params, req.style))

    return Job(n_in, n, start)


class _NoSessionType:
    """Stands for a session where a runner only checks requests."""

    max_context = 0


_NoSession = _NoSessionType()
