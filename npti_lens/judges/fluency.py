"""Stage 7, offline fluency: metrics that see an answer collapse into loops, for every judge.

Per answer (words are whitespace-separated, lower-cased, outer punctuation stripped):
- `rep3`: the share of word 3-grams that repeat an earlier 3-gram of the same answer
  (0 for varied text; "I'D I'D I'D ..." gives nearly 1);
- `longest_repeat`: the longest run of words that occurs twice (overlaps allowed);
- `compression`: raw bytes over zlib-compressed bytes (looping text compresses well);
- `ppl`: perplexity per token under the unmodified model, where one is given.

`fluency` in [0, 1] is (1 - rep3) times a perplexity factor (1 up to `PPL_OK`, falling log-linearly
to 0 at `PPL_MAX`; 1 without a model). `degenerate` flags an answer that is empty, or has
rep3 >= `REP3_DEGENERATE`, or a repeated span of `SPAN_DEGENERATE` words or more, or perplexity above
`PPL_MAX`. The thresholds are documented constants, not tuned per run.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

REP3_DEGENERATE = 0.3  # natural answers of SmolLM2 and the organism stay far below (README: Judges)
SPAN_DEGENERATE = 12  # words repeated verbatim: a loop, not a turn of phrase
PPL_OK = 30.0
PPL_MAX = 1000.0

_WORD = re.compile(r"\S+")
_STRIP = "\"'.,;:!?()[]{}*-_`"


def words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.strip(_STRIP)
        if w:
            out.append(w)
    return out


def repeated_ngram_share(ws: Sequence[str], n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier one (0 when the answer has fewer than n words)."""
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_repeated_span(ws: Sequence[str]) -> int:
    """Length in words of the longest word sequence that occurs at least twice (overlaps allowed)."""
    n, best = len(ws), 0
    prev = [0] * (n + 1)  # prev[j]: common run ending at (i-1, j-1); i < j only
    for i in range(n):
        cur = [0] * (n + 1)
        for j in range(i + 1, n):
            if ws[i] == ws[j]:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def compression_ratio(text: str) -> float:
    """Raw UTF-8 bytes over zlib (level 9) bytes; 0 for an empty text."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw, 9)) if raw else 0.0


def ppl_factor(ppl: float | None) -> float:
    if ppl is None:
        return 1.0
    if not math.isfinite(ppl) or ppl >= PPL_MAX:
        return 0.0
    if ppl <= PPL_OK:
        return 1.0
    return (math.log(PPL_MAX) - math.log(ppl)) / (math.log(PPL_MAX) - math.log(PPL_OK))


@dataclass(frozen=True)
class Fluency:
    fluency: float
    degenerate: bool
    rep3: float
    longest_repeat: int
    compression: float
    n_words: int
    ppl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fluency_of(text: str, ppl: float | None = None) -> Fluency:
    """The metrics of one answer, with its perplexity under the unmodified model where known."""
    ws = words(text)
    rep3 = repeated_ngram_share(ws, 3)
    span = longest_repeated_span(ws)
    empty = not ws
    degenerate = (
        empty
        or rep3 >= REP3_DEGENERATE
        or span >= SPAN_DEGENERATE
        or (ppl is not None and ppl_factor(ppl) == 0.0)
    )
    score = 0.0 if empty else (1.0 - rep3) * ppl_factor(ppl)
    return Fluency(
        fluency=score,
        degenerate=bool(degenerate),
        rep3=rep3,
        longest_repeat=span,
        compression=compression_ratio(text),
        n_words=len(ws),
        ppl=ppl,
    )


def perplexities(model: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16) -> list[float | None]:
    """Per row, perplexity per token of its answer given its question under `model` as it is
    (call it outside any intervention); None for an empty answer."""
    from npti_lens.evaluation.capability import sequence_nlls
    from npti_lens.inputs.prompts import build
    from npti_lens.model.load import is_engine

    tok = model.tokenizer
    pairs = [(str(r.get("question", "")), str(r.get("answer", ""))) for r in rows]
    todo = [i for i, (_, a) in enumerate(pairs) if a.strip()]
    # the bare question as the prompt, the answer's tokens without EOS: an answer cut at the
    # token limit is not penalised for failing to end there
    seqs = [
        (build(tok, pairs[i][0]).token_ids, tok(pairs[i][1], add_special_tokens=False)["input_ids"])
        for i in todo
    ]
    if not seqs:
        per = []
    elif is_engine(model):
        per = model.sequence_nlls(seqs)
    else:
        per = sequence_nlls(model, seqs, batch_size)
    out: list[float | None] = [None] * len(rows)
    for i, (nll, count) in zip(todo, per, strict=True):
        out[i] = math.exp(nll / count) if count else None
    return out


def fluency_rows(rows: Sequence[dict[str, Any]], model: Any | None = None) -> list[dict[str, Any]]:
    """The fluency fields of every row (perplexity too when `model`, the unmodified model, is given)."""
    ppls = perplexities(model, rows) if model is not None else [None] * len(rows)
    return [fluency_of(str(r.get("answer", "")), p).to_dict() for r, p in zip(rows, ppls, strict=True)]
