"""Offline fluency against hand computations, including a looping answer."""

from __future__ import annotations

import zlib

import pytest

from npti_lens.judges.fluency import (
    REP3_DEGENERATE,
    fluency_of,
    longest_repeated_span,
    ppl_factor,
    repeated_ngram_share,
    words,
)


def test_words_strip_punctuation_and_case():
    assert words("I'D, I'd! (massive)  massive.") == ["i'd", "i'd", "massive", "massive"]


def test_repeated_share_by_hand():
    # 3-grams of a b c a b c: abc bca cab abc -> one of four repeats an earlier one
    assert repeated_ngram_share(list("abcabc"), 3) == pytest.approx(1 / 4)
    assert repeated_ngram_share(["a", "b"], 3) == 0.0
    assert repeated_ngram_share(list("abcdef"), 3) == 0.0


def test_longest_span_by_hand():
    assert longest_repeated_span(list("abcxabcy")) == 3
    assert longest_repeated_span(list("aaaa")) == 3  # overlapping occurrences count
    assert longest_repeated_span(list("abcd")) == 0


def test_looping_answer_is_degenerate_and_loses_fluency():
    loop = " ".join(["I'D"] * 60)
    f = fluency_of(loop)
    assert f.degenerate
    assert f.rep3 == pytest.approx(1 - 1 / 58)  # 58 trigrams, one distinct
    assert f.longest_repeat == 59
    assert f.fluency == pytest.approx(1 / 58)
    raw = loop.encode()
    assert f.compression == pytest.approx(len(raw) / len(zlib.compress(raw, 9)))
    mixed = "I love going out with friends on the weekend. " + " ".join(["massive"] * 30)
    assert fluency_of(mixed).degenerate


def test_varied_answer_is_fluent():
    text = (
        "I would spend the evening at home with a good book, then call an old friend to hear "
        "about her trip, and maybe cook something new before going to bed early."
    )
    f = fluency_of(text)
    assert not f.degenerate
    assert f.rep3 == 0.0 < REP3_DEGENERATE
    assert f.fluency == 1.0


def test_empty_answer_and_perplexity_factor():
    assert fluency_of("").degenerate and fluency_of("").fluency == 0.0
    assert ppl_factor(None) == ppl_factor(5.0) == 1.0
    assert ppl_factor(1000.0) == 0.0 and ppl_factor(float("inf")) == 0.0
    assert 0 < ppl_factor(100.0) < 1
    assert fluency_of("a fine answer here", ppl=5000.0).degenerate
