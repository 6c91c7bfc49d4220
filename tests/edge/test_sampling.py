"""Sampler: each knob does what it says, parameters are validated, seeds reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.errors import GenerationError
from edge.sampling import Sampler, SamplingParams

DRAWS = 4000


def _logits():
    return np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], dtype=np.float32))


def _freq(params, logits, history=None):
    s = Sampler(params)
    counts = np.bincount([s(logits, history) for _ in range(DRAWS)], minlength=logits.size)
    return counts / DRAWS


def test_greedy_picks_argmax():
    assert Sampler(SamplingParams())(np.array([0.1, 3.0, 2.9])) == 1


def test_temperature_one_follows_the_distribution():
    f = _freq(SamplingParams(temperature=1.0, seed=3), _logits())
    assert np.abs(f - np.exp(_logits())).max() < 0.03


def test_top_k_and_top_p_restrict_support():
    assert set(np.nonzero(_freq(SamplingParams(temperature=1.0, top_k=2, seed=1),
                                _logits()))[0]) == {0, 1}
    # 0.5 + 0.2 = 0.7 >= 0.65: the nucleus is the first two tokens
    assert set(np.nonzero(_freq(SamplingParams(temperature=1.0, top_p=0.65, seed=1),
                                _logits()))[0]) == {0, 1}
    # a tiny top_p still keeps one token
    assert set(np.nonzero(_freq(SamplingParams(temperature=1.0, top_p=1e-6, seed=1),
                                _logits()))[0]) == {0}


def test_repetition_penalty_demotes_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    s = Sampler(SamplingParams(repetition_penalty=1.3))
    assert s(logits, np.array([0])) == 1


def test_same_seed_same_tokens():
    draw = lambda seed: [Sampler(SamplingParams(temperature=0.9, seed=seed))(_logits())  # noqa
                         for _ in range(1)] + list(
        (lambda s: [s(_logits()) for _ in range(50)])(Sampler(SamplingParams(temperature=0.9,
                                                                               seed=seed))))
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("kw, field", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=10**9), "max_new_tokens"),
    (dict(temperature=math.nan), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(stop=("",)), "stop"),
])
def test_invalid_parameters_are_named(kw, field):
    with pytest.raises(GenerationError, match=field):
        SamplingParams(**kw).validate()


def test_nan_logits_fail_the_request_only():
    s = Sampler(SamplingParams())
    with pytest.raises(GenerationError, match="NaN"):
        s(np.array([0.0, np.nan]))
    assert s(np.array([0.0, 1.0])) == 1
