"""Speculative decoding (edge/speculative.py, edge/generate.py): drafts from prompt lookup or a
draft model, checked in one forward pass, change the speed and never the tokens where the
model's batch logits equal its one-at-a-time logits; the sampler's draft acceptance keeps its
distribution."""

from __future__ import annotations

import numpy as np
import pytest

from edge.generate import Generation
from edge.sampling import Sampler, SamplingParams
from edge.speculative import DraftModel, PromptLookup, make_drafter

# Draws for the distribution check, and how far the observed frequencies may be from the
# sampler's probabilities (about 5 standard errors at p = 0.5).
DRAWS = 20000
FREQ_ATOL = 0.02


def test_lookup_drafts_the_continuation_of_the_latest_match():
    d = PromptLookup(max_ngram=3, min_ngram=2, max_draft=4)
    hist = [1, 2, 3, 4, 5, 6, 9, 2, 3, 7, 8, 1, 2, 3]
    d.start(hist)
    # the last 3 tokens (1, 2, 3) occurred at the start: 4 5 6 9 follows
    assert d.propose(hist, 10) == [4, 5, 6, 9]
    assert d.propose(hist, 2) == [4, 5]
    hist2 = hist + [7]  # (2, 3, 7) occurred once: 8 1 2 3 follows
    assert d.propose(hist2, 10) == [8, 1, 2, 3]
    assert d.propose([5, 5, 6], 4) == []  # nothing to match
    assert d.propose(hist, 0) == []


def test_lookup_prefers_longer_matches():
    d = PromptLookup(max_ngram=3, min_ngram=1, max_draft=2)
    hist = [4, 9, 1, 7, 2, 9, 1, 8, 5, 2, 9, 1]
    d.start(hist)
    # (2, 9, 1) matches at position 4 -> 8 5; (9, 1) alone would match later -> 8 too
    assert d.propose(hist, 2) == [8, 5]


def test_greedy_acceptance_is_the_argmax():
    s = Sampler(SamplingParams())
    logits = np.array([0.1, 2.0, 1.9, -1.0], np.float32)
    assert s.accept_draft(logits, [0], 1) == (1, True)
    assert s.accept_draft(logits, [0], 2) == (1, False)


@pytest.mark.parametrize("draft", [0, 2, 3])
def test_sampled_acceptance_keeps_the_distribution(draft):
    """With a deterministic draft, the kept token follows the sampler's own distribution:
    accepted with p(draft), otherwise drawn from p without the draft."""
    params = SamplingParams(temperature=0.7, top_k=3, seed=11)
    logits = np.array([1.0, 0.2, 0.5, -3.0], np.float32)
    ref = Sampler(params)
    ids, probs = ref._distribution(ref._scores(logits, None))
    want = np.zeros(4)
    want[ids] = probs
    s = Sampler(params)
    got = np.zeros(4)
    for _ in range(DRAWS):
        got[s.accept_draft(logits, None, draft)[0]] += 1
    np.testing.assert_allclose(got / DRAWS, want, atol=FREQ_ATOL)


def test_ngram_ban_looks_at_the_generated_text_only():
    s = Sampler(SamplingParams(no_repeat_ngram=3), prompt_len=3)
    logits = np.zeros(10, np.float32)
    logits[5] = 1.0
    # the prompt has (4, 5) then 5: copying it is free
    assert s(logits, [4, 5, 5, 4, 5]) == 5
    # generated text (after 3 prompt tokens) has 4 5 -> 5; the next "4 5" may not be followed
    # by 5 again
    hist = [0, 0, 0, 4, 5, 5, 4, 5]
    assert s(logits, hist) != 5


class _ScriptedSession:
    """A model whose next token is a fixed function of the last one (deterministic logits), with
    a cache of positions; counts forward passes."""

    batch_logits = True

    def __init__(self, vocab=12, max_context=256):
        self.vocab, self.max_context, self.pos = vocab, max_context, 0
        self.passes = 0
        self.tokens: list[int] = []

    def _logits(self, last):
        x = np.zeros(self.vocab, np.float32)
        x[(3 * last + 1) % (self.vocab - 1)] = 5.0  # never token vocab - 1 (EOS)
        return x

    def reset(self):
        self.pos = 0
        self.tokens = []

    def prefill(self, ids):
        self.reset()
        return self.extend(ids)

    def extend(self, ids):
        return self.forward(ids)[-1]

    def forward(self, ids):
        self.passes += 1
        self.tokens = self.tokens[:self.pos] + list(ids)
        self.pos += len(ids)
        return np.stack([self._logits(t) for t in ids])

    def decode(self, token):
        return self.extend([token])

    def rewind(self, pos):
        assert 0 <= pos <= self.pos
        self.pos = pos


class _Tok:
    vocab_size = 12

    def decode(self, ids, **kw):
        return "".join(chr(97 + i) for i in ids)


@pytest.fixture(autouse=True)
def _byte_stream(monkeypatch):
    import edge.tokenizer as et

    class Stream:
        def __init__(self, tok):
            pass

        def push(self, t):
            return chr(97 + t)

        def flush(self):
            return ""

    monkeypatch.setattr(et, "StreamDecoder", Stream)


def _gen(drafter, n=40, **kw):
    s = _ScriptedSession()
    prompt = [1, 4, 2, 7, 0, 1, 4, 2, 7, 0, 1, 4]
    g = Generation(s, _Tok(), prompt, SamplingParams(max_new_tokens=n, **kw), [11],
                   drafter=drafter)
    r = g.run()
    return r, s


def test_speculation_gives_the_same_tokens_in_fewer_passes():
    plain, s0 = _gen(None)
    spec, s1 = _gen(PromptLookup())
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert len(plain.token_ids) == 40
    st = spec.extra["speculative"]
    assert st["accepted_tokens"] > 20 and s1.passes < s0.passes / 2, (st, s0.passes, s1.passes)
    assert s1.tokens[:s1.pos] == [1, 4, 2, 7, 0, 1, 4, 2, 7, 0, 1, 4] + spec.token_ids[:-1]


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_speculation_stops_exactly_at_max_new_tokens(n):
    plain, _ = _gen(None, n)
    spec, _ = _gen(PromptLookup(), n)
    assert spec.token_ids == plain.token_ids and len(spec.token_ids) == n


def test_speculation_honours_stop_strings():
    plain, _ = _gen(None, 40, stop=("bec",))
    spec, _ = _gen(PromptLookup(), 40, stop=("bec",))
    assert spec.text == plain.text and spec.finish_reason == plain.finish_reason == "stop"


def test_a_draft_model_identical_to_the_target_is_always_right():
    class Engine:
        name = "scripted"

        def session(self):
            return _ScriptedSession()

    spec, _ = _gen(DraftModel(Engine()))
    plain, _ = _gen(None)
    st = spec.extra["speculative"]
    assert spec.token_ids == plain.token_ids
    assert st["accepted_tokens"] == st["drafted_tokens"] > 0


def test_mode_names():
    assert make_drafter("off") is None
    assert isinstance(make_drafter("lookup"), PromptLookup)
    from edge.errors import GenerationError

    with pytest.raises(GenerationError, match="choose off, lookup or draft:MODEL"):
        make_drafter("ngram")


def test_lookup_draft_length_grows_on_acceptance_and_shrinks_on_rejection():
    from edge.speculative import DRAFT_GROW, DRAFT_MIN, DRAFT_START

    d = PromptLookup(max_ngram=2, min_ngram=1, max_draft=7)
    hist = list(range(20)) + [3]
    d.start(hist)
    assert len(d.propose(hist, 20)) == DRAFT_START
    d.feedback(DRAFT_START, DRAFT_START)
    assert d.draft_len == DRAFT_START + DRAFT_GROW
    assert len(d.propose(hist, 20)) == DRAFT_START + DRAFT_GROW
    d.feedback(DRAFT_START + DRAFT_GROW, DRAFT_START + DRAFT_GROW)
    assert d.draft_len == 7  # capped at max_draft
    d.feedback(7, 2)
    assert d.draft_len == 3  # one more than accepted
    d.feedback(3, 0)
    assert d.draft_len == DRAFT_MIN
    d.start(hist)  # a new generation starts over
    assert d.draft_len == DRAFT_START


# ------------------------------------------------------------------ real model
# A rewrite whose greedy text must be the same with and without prompt lookup (SmolLM2,
# weight-only and float artifacts: the verification pass gives each token its decode logits bit
# for bit). MIN_ACCEPTED: drafts must actually have been taken, or the test shows nothing.
REWRITE_TOKENS = 96
MIN_ACCEPTED = 5
DOC = ("The council voted on Tuesday to build 14 kilometres of protected cycle lanes. The first "
       "section, along Quay Street and Market Road, opens in April. The plan costs 6.2 million "
       "pounds, of which 4.1 million comes from a regional grant.")


def _rewrite_both(path):
    from edge.engines import open_model
    from edge.taskrun import TaskRunner
    from edge.tasks import task_defaults

    eng = open_model(str(path), threads=2)
    params = SamplingParams(**{**task_defaults("rewrite"), "max_new_tokens": REWRITE_TOKENS})
    out = {}
    for mode in ("off", "lookup"):
        out[mode] = TaskRunner(eng, mode).run("rewrite", DOC, params=params, style="formal")
    return out


def test_smollm2_int8_rewrite_is_the_same_with_lookup(smollm2_edge_int8):
    out = _rewrite_both(smollm2_edge_int8)
    assert out["lookup"].text == out["off"].text and out["off"].generated_tokens > 20
    spec = out["lookup"].to_json()["speculative"]
    assert spec["accepted_tokens"] >= MIN_ACCEPTED, spec


@pytest.fixture(scope="module")
def smollm2_edge_float(smollm2_ck, tmp_path_factory):
    """SmolLM2 as an unquantized edge artifact (the `none` recipe), maximum context 1024."""
    from export import targets
    from export.pipeline import ExportConfig, ExportState
    from export.quantize import parse_recipe

    work = tmp_path_factory.mktemp("smollm2-none")
    cfg = ExportConfig(checkpoint=str(smollm2_ck.path), out=work, recipe="none",
                       max_context=1024)
    st = ExportState(cfg, recipe=parse_recipe("none"), workdir=work, checkpoint=smollm2_ck)
    return targets.get("edge").stage(st).artifacts["edge"]


def test_smollm2_float_rewrite_is_the_same_with_lookup(smollm2_edge_float):
    out = _rewrite_both(smollm2_edge_float)
    assert out["lookup"].text == out["off"].text and out["off"].generated_tokens > 20
    assert out["lookup"].to_json()["speculative"]["accepted_tokens"] >= MIN_ACCEPTED


# Int8-activation artifacts (8da schemes): a verification pass quantizes each token's
# activations exactly as decode does (per token / per block), and the integer sums are exact,
# but its products may accumulate the scaled sums in another order than the decode kernels (the
# 8-token prompt tiles do), so its logits match decode's to float rounding, bit for bit only
# where the orders agree (as in this small 4-bit artifact's kernels). What holds: every logit within
# STEP_LOGIT_RTOL of the logit range, and the same argmax wherever the top two decode logits
# are further apart than that (greedy text can differ only at such near-ties).
STEP_LOGIT_RTOL = 1e-4


def test_int8_activation_steps_match_decode_to_rounding(tmp_path):
    from edge.engines import open_model
    from support.artifacts import write

    eng = open_model(str(write(tmp_path / "art")), threads=2)
    rng = np.random.default_rng(3)
    prompt = [int(t) for t in rng.integers(0, 250, 40)]
    draft = [int(t) for t in rng.integers(0, 250, 7)]
    s = eng.session()
    s.prefill(prompt)
    rows = s.forward(draft)  # one pass over 7 tokens
    s.prefill(prompt)
    one = np.stack([s.decode(t).copy() for t in draft])
    scale = float(one.max() - one.min())
    assert np.abs(rows - one).max() <= STEP_LOGIT_RTOL * scale
    top2 = np.sort(one, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * STEP_LOGIT_RTOL * scale
    assert clear.any()
    assert (rows.argmax(1) == one.argmax(1))[clear].all()
