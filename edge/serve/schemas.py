"""Request bodies: parsed, type-checked and range-checked into typed requests.

Every problem becomes an APIError 400 naming the parameter, in OpenAI's wording where OpenAI
has one (an unknown parameter is refused, as OpenAI refuses it, so that a typo is not silently
ignored). JSON `null` means "not given". Parameters of OpenAI's API that this server does not
implement (several choices, penalties on presence / frequency, log probabilities, tools, JSON
mode) are accepted only with their neutral value and refused otherwise, with the reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..tasks import MAX_STYLE_CHARS, MAX_TASK_INPUT_BYTES
from .config import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from .errors import bad_request

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Message keys that clients echo back from a previous reply; accepted when empty.
_ECHOED_KEYS = ("tool_calls", "function_call", "refusal", "audio", "annotations")
# Upper bounds that only reject nonsense (the sampler would accept them).
MAX_TOP_K = 1 << 20
MAX_REPETITION_PENALTY = 10.0
MAX_SEED = (1 << 64) - 1


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def parse_json(body: bytes) -> dict:
    """The body as a JSON object (duplicate keys, invalid UTF-8 and deep nesting refused)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not UTF-8 text (byte {e.start})",
                          code="invalid_json") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise bad_request(f"the request body has the key {e.args[0]!r} twice",
                          code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e.msg} (line {e.lineno}, "
                          f"column {e.colno})", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the request body nests JSON too deeply", code="invalid_json") from None
    except ValueError as e:  # e.g. an integer literal with more digits than Python converts
        raise bad_request(f"the request body is not usable JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be a JSON object, not "
                          f"{type(obj).__name__ if obj is not None else 'null'}",
                          code="invalid_json")
    return obj


def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


class Fields:
    """Take parameters out of a body one by one; whatever is left at the end is unknown."""

    def __init__(self, body: dict):
        self.rest = dict(body)

    def raw(self, name: str):
        return self.rest.pop(name, None)

    def done(self) -> None:
        if self.rest:
            name = sorted(self.rest)[0]
            raise bad_request(f"Unrecognized request argument supplied: {name}", name,
                              "unknown_parameter")

    def integer(self, name: str, lo: int, hi: int) -> int | None:
        v = self.raw(name)
        if v is None:
            return None
        if type(v) is not int:
            raise bad_request(f"{name} must be an integer, not {_type_name(v)}", name,
                              "invalid_type")
        if not lo <= v <= hi:
            raise bad_request(f"{name} must be in {lo}..{hi}, got {v}", name)
        return v

    def number(self, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
        v = self.raw(name)
        if v is None:
            return None
        if type(v) not in (int, float):
            raise bad_request(f"{name} must be a number, not {_type_name(v)}", name, "invalid_type")
        v = float(v)
        ok = math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            rng = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
            raise bad_request(f"{name} must be a finite number in {rng}, got {v!r}", name)
        return v

    def boolean(self, name: str) -> bool | None:
        v = self.raw(name)
        if v is None or type(v) is bool:
            return v
        raise bad_request(f"{name} must be a boolean, not {_type_name(v)}", name, "invalid_type")

    def string(self, name: str, required: bool = False) -> str | None:
        v = self.raw(name)
        if v is None:
            if required:
                raise bad_request(f"{name} is required", name, "missing_required_parameter")
            return None
        if type(v) is not str:
            raise bad_request(f"{name} must be a string, not {_type_name(v)}", name,
                              "invalid_type")
        return v

    def neutral(self, name: str, neutral, why: str) -> None:
        """A parameter this server accepts only at its neutral value(s)."""
        v = self.raw(name)
        if v is None or any(type(v) is type(n) and v == n for n in neutral):
            return
        raise bad_request(f"{name}={json.dumps(v)[:80]} is not supported: {why}", name,
                          "unsupported_parameter")


@dataclass
class Sampling:
    """What a request sets of the decoding; None leaves the server's default."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class ChatRequest:
    messages: list[dict]
    sampling: Sampling
    model: str | None = None
    stream: bool = False
    include_usage: bool = False


@dataclass
class CompletionRequest:
    prompt: str | list[int]
    sampling: Sampling
    model: str | None = None
    stream: bool = False
    include_usage: bool = False


@dataclass
class TaskRequest:
    task: str  # "summarize" | "rewrite"
    text: str
    sampling: Sampling
    style: str | None = None
    model: str | None = None
    stream: bool = False
    include_usage: bool = field(default=True)


def _stop(f: Fields) -> tuple[str, ...]:
    v = f.raw("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}",
                          "stop")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise bad_request(f"each stop sequence must have 1..{MAX_STOP_CHARS} characters "
                              f"(got {len(s)})", "stop")
    return tuple(stops)


def _sampling(f: Fields, max_tokens_names=("max_tokens",)) -> Sampling:
    s = Sampling()
    for name in max_tokens_names:
        n = f.integer(name, 1, 1 << 31)
        if n is not None:
            if s.max_tokens is not None:
                raise bad_request(f"give either {' or '.join(max_tokens_names)}, not both", name)
            s.max_tokens = n
    s.temperature = f.number("temperature", 0.0, 2.0)
    s.top_p = f.number("top_p", 0.0, 1.0, lo_open=True)
    s.top_k = f.integer("top_k", 0, MAX_TOP_K)
    s.repetition_penalty = f.number("repetition_penalty", 0.0, MAX_REPETITION_PENALTY,
                                    lo_open=True)
    s.seed = f.integer("seed", 0, MAX_SEED)
    s.stop = _stop(f)
    return s


def _stream(f: Fields, default_usage: bool = False) -> tuple[bool, bool]:
    stream = bool(f.boolean("stream"))
    opts = f.raw("stream_options")
    usage = default_usage
    if opts is not None:
        if not stream:
            raise bad_request("stream_options is only allowed with stream=true", "stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise bad_request("stream_options must be an object with at most 'include_usage'",
                              "stream_options", "invalid_type")
        inc = opts.get("include_usage")
        if inc is not None and type(inc) is not bool:
            raise bad_request("stream_options.include_usage must be a boolean",
                              "stream_options.include_usage", "invalid_type")
        usage = bool(inc) if inc is not None else default_usage
    return stream, usage


def _common_unsupported(f: Fields) -> None:
    one = "this server returns one choice per request"
    f.neutral("n", (1,), one)
    f.neutral("presence_penalty", (0, 0.0), "use repetition_penalty")
    f.neutral("frequency_penalty", (0, 0.0), "use repetition_penalty")
    f.neutral("logit_bias", ({},), "token biases are not implemented")
    f.string("user")  # an end-user id for the caller's own records; it changes no output


def _content(i: int, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(
                    p.get("text"), str) or set(p) - {"type", "text"}:
                kind = p.get("type") if isinstance(p, dict) else _type_name(p)
                raise bad_request(f"messages[{i}].content[{j}]: only text parts "
                                  "({'type': 'text', 'text': ...}) are supported, got "
                                  f"{json.dumps(kind)[:40]}", f"messages[{i}].content",
                                  "unsupported_content")
            parts.append(p["text"])
        return "".join(parts)
    raise bad_request(f"messages[{i}].content must be a string or an array of text parts, not "
                      f"{_type_name(content)}", f"messages[{i}].content", "invalid_type")


def _messages(v, max_messages: int) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise bad_request("messages must be a non-empty array of {role, content} objects",
                          "messages", "invalid_type" if not isinstance(v, list) else "invalid_value")
    if len(v) > max_messages:
        raise bad_request(f"messages has {len(v)} entries; this server takes at most "
                          f"{max_messages}", "messages", "too_many_messages")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object, not {_type_name(m)}",
                              f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role is {json.dumps(role)[:40]}; use one of "
                              f"{', '.join(ROLES)} (this server runs no tools)",
                              f"messages[{i}].role")
        for k, val in m.items():
            if k in ("role", "content"):
                continue
            if k == "name" and isinstance(val, str):
                continue  # the chat formats, like the models' own templates, render no names
            if k in _ECHOED_KEYS and val in (None, [], ""):
                continue
            raise bad_request(f"messages[{i}].{k} is not supported", f"messages[{i}].{k}",
                              "unknown_parameter")
        if "content" not in m or m["content"] is None:
            raise bad_request(f"messages[{i}].content is required", f"messages[{i}].content",
                              "missing_required_parameter")
        out.append({"role": ROLES[role], "content": _content(i, m["content"])})
    return out


def chat_request(body: dict, max_messages: int) -> ChatRequest:
    f = Fields(body)
    model = f.string("model")
    messages = _messages(f.raw("messages"), max_messages)
    sampling = _sampling(f, ("max_tokens", "max_completion_tokens"))
    stream, usage = _stream(f)
    _common_unsupported(f)
    f.neutral("logprobs", (False,), "log probabilities are not returned")
    f.neutral("top_logprobs", (0,), "log probabilities are not returned")
    f.neutral("response_format", ({"type": "text"},), "only plain text replies are produced")
    f.neutral("tools", ([],), "this server runs no tools")
    f.neutral("tool_choice", ("none",), "this server runs no tools")
    f.done()
    return ChatRequest(messages, sampling, model, stream, usage)


def completion_request(body: dict) -> CompletionRequest:
    f = Fields(body)
    model = f.string("model")
    p = f.raw("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, list):
        if not p or not all(type(t) is int for t in p):
            raise bad_request("prompt must be a string, or an array of token ids (one prompt "
                              "per request)", "prompt", "invalid_type")
    elif not isinstance(p, str):
        raise bad_request("prompt is required: a string or an array of token ids", "prompt",
                          "invalid_type" if p is not None else "missing_required_parameter")
    sampling = _sampling(f)
    stream, usage = _stream(f)
    _common_unsupported(f)
    f.neutral("best_of", (1,), "this server returns one choice per request")
    f.neutral("echo", (False,), "the prompt is not echoed")
    f.neutral("suffix", ("",), "insertion is not implemented")
    f.neutral("logprobs", (0,), "log probabilities are not returned")
    f.done()
    return CompletionRequest(p, sampling, model, stream, usage)


def task_request(task: str, body: dict) -> TaskRequest:
    f = Fields(body)
    model = f.string("model")
    text = f.string("text", required=True)
    if not text.strip():
        raise bad_request("text is empty", "text")
    if len(text.encode("utf-8")) > MAX_TASK_INPUT_BYTES:
        raise bad_request(f"text is larger than {MAX_TASK_INPUT_BYTES} bytes of UTF-8; split it "
                          "into parts", "text", "input_too_large")
    style = None
    if task == "rewrite":
        style = f.string("style", required=True).strip()
        if not style or len(style) > MAX_STYLE_CHARS:
            raise bad_request(f"style must be a short description (1..{MAX_STYLE_CHARS} "
                              "characters) such as formal, casual, concise, simple, bullet",
                              "style")
    sampling = _sampling(f)
    stream, usage = _stream(f, default_usage=True)
    f.done()
    return TaskRequest(task, text.strip(), sampling, style, model, stream, usage)
