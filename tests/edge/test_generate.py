"""The generation loop on the real model's torch reference: stop strings, EOS ids, streaming,
context limits, cancellation and sessions shared across threads."""

from __future__ import annotations

import threading

import pytest

from edge.errors import GenerationError
from edge.generate import Generation
from edge.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(smollm2_ck):
    from export.model.reference import TorchEngine

    return TorchEngine(smollm2_ck, max_context=256)


def _ids(engine, text="Write a short poem about the sea."):
    from edge.chat import detect_chat_format, encode_chat

    tok = engine.tokenizer
    return encode_chat(tok, [{"role": "user", "content": text}], detect_chat_format(tok))


def _gen(engine, ids, **kw):
    return Generation(engine.session(), engine.tokenizer, ids, SamplingParams(**kw),
                      engine.eos_ids)


def test_stream_joins_to_full_decode(engine):
    g = _gen(engine, _ids(engine, "Écris une phrase en français avec des accents."),
             max_new_tokens=40)
    pieces = list(g)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == g.result.text == engine.tokenizer.decode(g.result.token_ids)


def test_eos_finishes_with_reason(engine):
    r = _gen(engine, _ids(engine, "Say only the word: yes"), max_new_tokens=64).run()
    assert r.finish_reason == "eos"
    assert r.generated_tokens == len(r.token_ids) + 1
    assert engine.eos_ids[0] not in r.token_ids


def test_length_finish(engine):
    r = _gen(engine, _ids(engine), max_new_tokens=5).run()
    assert r.finish_reason == "length" and len(r.token_ids) == 5


def test_stop_string_split_across_tokens_is_caught_and_not_emitted(engine):
    ids = _ids(engine)
    full = _gen(engine, ids, max_new_tokens=60).run()
    text = full.text
    assert len(text) > 30
    # a stop string that straddles a token boundary, from the middle of the greedy output
    cut = len(engine.tokenizer.decode(full.token_ids[:6]))
    stop = text[cut - 2:cut + 3]
    assert len(stop) == 5
    g = _gen(engine, ids, max_new_tokens=60, stop=(stop,))
    pieces = list(g)
    assert g.result.finish_reason == "stop"
    assert "".join(pieces) == g.result.text == text[:text.index(stop)]


def test_prompt_over_context_is_an_error_with_counts(engine):
    ids = _ids(engine, "word " * 300)
    with pytest.raises(GenerationError, match=r"\(\d+ tokens\).*exceeds the context of 256"):
        _gen(engine, ids, max_new_tokens=8)
    one_under = ids[:256 - 8]
    assert _gen(engine, one_under, max_new_tokens=8).run().generated_tokens >= 1
    with pytest.raises(GenerationError):
        _gen(engine, ids[:256 - 7], max_new_tokens=8)


def test_cancel_frees_session_and_next_request_matches(engine):
    ids = _ids(engine)
    want = _gen(engine, ids, max_new_tokens=20).run().token_ids
    for _ in range(20):
        g = iter(_gen(engine, ids, max_new_tokens=20))
        next(g)
        g.close()  # consumer went away mid-stream
    assert _gen(engine, ids, max_new_tokens=20).run().token_ids == want


def test_threads_share_one_model(engine):
    prompts = [_ids(engine, t) for t in ("Name three fruits.", "What is 2+2?",
                                         "Describe a cat.", "Say hello in Spanish.")]
    sequential = [_gen(engine, p, max_new_tokens=16).run().token_ids for p in prompts]
    out = [None] * len(prompts)

    def work(i):
        out[i] = _gen(engine, prompts[i], max_new_tokens=16).run().token_ids

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == sequential


def test_seeded_sampling_is_reproducible(engine):
    ids = _ids(engine)
    a = _gen(engine, ids, max_new_tokens=24, temperature=0.8, top_p=0.9, seed=5).run()
    b = _gen(engine, ids, max_new_tokens=24, temperature=0.8, top_p=0.9, seed=5).run()
    assert a.token_ids == b.token_ids
