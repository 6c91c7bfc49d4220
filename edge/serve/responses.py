"""Response bodies in OpenAI's shapes, and server-sent events.

chat:       chat.completion / chat.completion.chunk (a first chunk with the role, content
            deltas, a last chunk with finish_reason, then one with usage when asked)
completion: text_completion, whole or streamed the same way
task:       {"object": "summary" | "rewrite", "text", "finish_reason", "usage"}; streamed as
            "summary.chunk" / "rewrite.chunk" objects whose last one has finish_reason and usage

Streams end with `data: [DONE]`. A failure after the stream has started is sent as one
`data: {"error": {...}}` event and the stream ends without [DONE] (the `openai` client raises
it as an APIError).
"""

from __future__ import annotations

import json
import time
import uuid

from ..generate import GenerationResult

# The runtime's finish reasons in OpenAI's words: an end-of-generation token and a stop string
# are both "stop".
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
SSE_DONE = b"data: [DONE]\n\n"
_PREFIX = {"chat": "chatcmpl", "completion": "cmpl", "task": "task"}


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def usage(r: GenerationResult) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.generated_tokens,
            "total_tokens": r.prompt_tokens + r.generated_tokens}


class Shape:
    """The bodies of one request: kind is chat | completion | task (task_name for tasks)."""

    def __init__(self, kind: str, model_id: str, task_name: str | None = None):
        self.kind, self.model, self.task = kind, model_id, task_name
        self.id = f"{_PREFIX[kind]}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, r: GenerationResult) -> dict:
        finish = FINISH[r.finish_reason]
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                      "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(r)}
        if self.kind == "completion":
            choice = {"index": 0, "text": r.text, "logprobs": None, "finish_reason": finish}
            return {**self._head("text_completion"), "choices": [choice], "usage": usage(r)}
        return {**self._head(self.task), "text": r.text, "finish_reason": finish,
                "usage": usage(r)}

    def opening(self) -> list[bytes]:
        if self.kind != "chat":
            return []
        return [self._chat_chunk({"role": "assistant", "content": ""}, None)]

    def delta(self, text: str) -> bytes:
        if self.kind == "chat":
            return self._chat_chunk({"content": text}, None)
        if self.kind == "completion":
            return self._completion_chunk(text, None)
        return sse({**self._head(self.task + ".chunk"), "text": text, "finish_reason": None})

    def closing(self, r: GenerationResult, with_usage: bool) -> list[bytes]:
        finish = FINISH[r.finish_reason]
        if self.kind == "task":
            last = {**self._head(self.task + ".chunk"), "text": "", "finish_reason": finish}
            if with_usage:
                last["usage"] = usage(r)
            return [sse(last), SSE_DONE]
        out = [self._chat_chunk({}, finish) if self.kind == "chat"
               else self._completion_chunk("", finish)]
        if with_usage:
            obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
            out.append(sse({**self._head(obj), "choices": [], "usage": usage(r)}))
        return out + [SSE_DONE]

    def _chat_chunk(self, delta: dict, finish: str | None) -> bytes:
        return sse({**self._head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]})

    def _completion_chunk(self, text: str, finish: str | None) -> bytes:
        return sse({**self._head("text_completion"),
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish}]})
