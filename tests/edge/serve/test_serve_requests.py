"""Bad requests get a 4xx with OpenAI's error JSON naming what is wrong, never a 500, and the
server keeps serving: malformed JSON, wrong types, NaN / infinite / negative parameters,
bodies over the limit (with and without Content-Length), too many messages, prompts longer
than the context, unknown models, paths and methods."""

from __future__ import annotations

import httpx
import pytest

from serving import MODEL_ID

pytestmark = pytest.mark.slow

CTX = 256
MAX_BODY = 64 * 1024
MAX_INPUT = 2000  # --max-input of the test server (task document tokens)
MAX_MESSAGES = 8
MAX_TOKENS_LIMIT = 64
CHAT = "/v1/chat/completions"
OK_MESSAGES = '[{"role": "user", "content": "Hi"}]'


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("--parallel", "1", "--queue", "2", "--ctx", str(CTX), "--max-body",
                        str(MAX_BODY), "--max-messages", str(MAX_MESSAGES), "--max-tokens",
                        str(MAX_TOKENS_LIMIT), "--max-input", str(MAX_INPUT), "--threads", "2")


def _chat(extra: str) -> bytes:
    return ('{"messages": ' + OK_MESSAGES + ', "max_tokens": 4' + extra + "}").encode()


BAD_BODIES = [
    # (name, path, body, status, error code, a word the message must contain)
    ("empty body", CHAT, b"", 400, "invalid_json", "JSON"),
    ("truncated JSON", CHAT, b'{"messages": [', 400, "invalid_json", "JSON"),
    ("not an object", CHAT, b"[1, 2, 3]", 400, "invalid_json", "object"),
    ("null body", CHAT, b"null", 400, "invalid_json", "object"),
    ("not UTF-8", CHAT, b'{"messages": "\xff\xfe"}', 400, "invalid_json", "UTF-8"),
    ("duplicate key", CHAT, _chat(', "max_tokens": 5'), 400, "invalid_json", "twice"),
    ("deep nesting", CHAT, b"[" * 20000 + b"]" * 20000, 400, "invalid_json", "deep"),
    ("huge integer literal", CHAT, _chat(', "seed": ' + "9" * 5000), 400, "invalid_json",
     "JSON"),
    ("NaN temperature", CHAT, _chat(', "temperature": NaN'), 400, "invalid_value",
     "temperature"),
    ("Infinity top_p", CHAT, _chat(', "top_p": Infinity'), 400, "invalid_value", "top_p"),
    ("overflowing float", CHAT, _chat(', "temperature": 1e999'), 400, "invalid_value",
     "temperature"),
    ("negative temperature", CHAT, _chat(', "temperature": -1'), 400, "invalid_value",
     "temperature"),
    ("negative max_tokens", CHAT, b'{"messages": ' + OK_MESSAGES.encode() + b', "max_tokens": -5}',
     400, "invalid_value", "max_tokens"),
    ("zero max_tokens", CHAT, b'{"messages": ' + OK_MESSAGES.encode() + b', "max_tokens": 0}',
     400, "invalid_value", "max_tokens"),
    ("max_tokens over the limit", CHAT, b'{"messages": ' + OK_MESSAGES.encode() +
     b', "max_tokens": 65}', 400, "invalid_value", "limit"),
    ("max_tokens as a string", CHAT, b'{"messages": ' + OK_MESSAGES.encode() +
     b', "max_tokens": "4"}', 400, "invalid_type", "integer"),
    ("max_tokens as a boolean", CHAT, b'{"messages": ' + OK_MESSAGES.encode() +
     b', "max_tokens": true}', 400, "invalid_type", "integer"),
    ("max_tokens as a float", CHAT, b'{"messages": ' + OK_MESSAGES.encode() +
     b', "max_tokens": 4.5}', 400, "invalid_type", "integer"),
    ("negative top_k", CHAT, _chat(', "top_k": -1'), 400, "invalid_value", "top_k"),
    ("top_p zero", CHAT, _chat(', "top_p": 0'), 400, "invalid_value", "top_p"),
    ("negative seed", CHAT, _chat(', "seed": -7'), 400, "invalid_value", "seed"),
    ("repetition_penalty zero", CHAT, _chat(', "repetition_penalty": 0'), 400,
     "invalid_value", "repetition_penalty"),
    ("stream as a string", CHAT, _chat(', "stream": "yes"'), 400, "invalid_type", "stream"),
    ("stop of the wrong type", CHAT, _chat(', "stop": 5'), 400, "invalid_type", "stop"),
    ("too many stops", CHAT, _chat(', "stop": ["a", "b", "c", "d", "e"]'), 400,
     "invalid_value", "stop"),
    ("empty stop", CHAT, _chat(', "stop": [""]'), 400, "invalid_value", "stop"),
    ("stream_options without stream", CHAT, _chat(', "stream_options": {"include_usage": true}'),
     400, "invalid_value", "stream_options"),
    ("unknown parameter", CHAT, _chat(', "temprature": 0.5'), 400, "unknown_parameter",
     "temprature"),
    ("unknown model", CHAT, _chat(', "model": "llama-70b"'), 404, "model_not_found",
     "llama-70b"),
    ("model of the wrong type", CHAT, _chat(', "model": 7'), 400, "invalid_type", "model"),
    ("messages missing", CHAT, b'{"max_tokens": 4}', 400, "invalid_type", "messages"),
    ("messages empty", CHAT, b'{"messages": []}', 400, "invalid_value", "messages"),
    ("message not an object", CHAT, b'{"messages": ["Hi"]}', 400, "invalid_type",
     "messages[0]"),
    ("unknown role", CHAT, b'{"messages": [{"role": "wizard", "content": "Hi"}]}', 400,
     "invalid_value", "role"),
    ("content of the wrong type", CHAT, b'{"messages": [{"role": "user", "content": 5}]}',
     400, "invalid_type", "content"),
    ("content missing", CHAT, b'{"messages": [{"role": "user"}]}', 400,
     "missing_required_parameter", "content"),
    ("image content part", CHAT, b'{"messages": [{"role": "user", "content": [{"type": '
     b'"image_url", "image_url": {"url": "http://x/y.png"}}]}]}', 400, "unsupported_content",
     "text"),
    ("tool calls in a message", CHAT, b'{"messages": [{"role": "assistant", "content": "x", '
     b'"tool_calls": [{"id": "1"}]}]}', 400, "unknown_parameter", "tool_calls"),
    ("too many messages", CHAT, ('{"messages": [' + ", ".join(
        ['{"role": "user", "content": "Hi"}'] * (MAX_MESSAGES + 1)) + "]}").encode(), 400,
     "too_many_messages", str(MAX_MESSAGES)),
    ("prompt over the context", CHAT, ('{"messages": [{"role": "user", "content": "'
     + "word " * CTX + '"}]}').encode(), 400, "context_length_exceeded", str(CTX)),
    ("prompt plus max_tokens over the context", CHAT, ('{"messages": [{"role": "user", '
     '"content": "' + "word " * (CTX - 60) + '"}], "max_tokens": 64}').encode(), 400,
     "context_length_exceeded", "max_tokens"),
    ("completion prompt missing", "/v1/completions", b'{"max_tokens": 4}', 400,
     "missing_required_parameter", "prompt"),
    ("completion token id out of range", "/v1/completions", b'{"prompt": [1, 2, 99999999]}',
     400, "invalid_value", "prompt[2]"),
    ("completion batch of prompts", "/v1/completions", b'{"prompt": ["a", "b"]}', 400,
     "invalid_type", "prompt"),
    ("completion echo", "/v1/completions", b'{"prompt": "a", "echo": true}', 400,
     "unsupported_parameter", "echo"),
    ("summarize without text", "/v1/tasks/summarize", b'{}', 400,
     "missing_required_parameter", "text"),
    ("summarize blank text", "/v1/tasks/summarize", b'{"text": "   "}', 400, "invalid_value",
     "empty"),
    ("summarize text over the input cap", "/v1/tasks/summarize", ('{"text": "' + "word "
     * (MAX_INPUT + 1) + '"}').encode(), 400, "invalid_value", "max-input"),
    ("rewrite without style", "/v1/tasks/rewrite", b'{"text": "Hello there."}', 400,
     "missing_required_parameter", "style"),
    ("rewrite with an essay as style", "/v1/tasks/rewrite", ('{"text": "Hello.", "style": "'
     + "very " * 40 + '"}').encode(), 400, "invalid_value", "style"),
]


@pytest.mark.parametrize("name, path, body, status, code, word", BAD_BODIES,
                         ids=[b[0] for b in BAD_BODIES])
def test_bad_request_gets_a_specific_4xx(server, name, path, body, status, code, word):
    r = httpx.post(server.url + path, content=body, timeout=120)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and word in err["message"], err
    assert err["type"] in ("invalid_request_error", "not_found_error")


def test_bodies_over_the_limit_get_413(server):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * MAX_BODY + b'"}]}'
    r = httpx.post(server.url + CHAT, content=big, timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # without Content-Length (chunked): cut off while reading

    def pieces():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    r = httpx.post(server.url + CHAT, content=pieces(), timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_paths_and_methods_get_json_errors(server):
    r = httpx.get(server.url + "/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(server.url + CHAT)
    assert r.status_code == 405 and "POST" in r.json()["error"]["message"]
    r = httpx.delete(server.url + "/v1/models")
    assert r.status_code == 405


def test_server_still_serves_and_never_answered_500(server):
    r = httpx.post(server.url + CHAT, json={"model": MODEL_ID, "messages": [
        {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8},
        timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    statuses = {dict(labels)["status"] for (name, labels) in server.metrics()
                if name == "llama_edge_requests_total"}
    assert statuses and not any(s.startswith("5") for s in statuses), statuses
    assert server.proc.poll() is None
