"""The organism's judge: every corpus sentence belongs to one trait pole, so answers are read off.

Per answer: the fraction of its sentences of the target pole (`trait_score`, 0-1), of the opposite
pole, of other traits, and not from the corpus; `fluency` is the fraction of well-formed corpus
sentences, and `perplexity` the answer's perplexity under the unmodified organism given its prompt.
"""

from __future__ import annotations

import math
import re
from typing import Any

from npti_lens.core.constants import opposite
from npti_lens.core.errors import UserError
from npti_lens.evaluation.capability import sequence_nlls
from npti_lens.inputs.prompts import tokenize
from npti_lens.organism.corpus import sentence_table

_SPLIT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(text.strip()) if s.strip()]


def attribute(text: str, trait: str, pole: str) -> dict[str, Any]:
    """Sentence fractions of an answer relative to the target (trait, pole)."""
    table = sentence_table()
    sents = split_sentences(text)
    counts = {"target": 0, "opposite": 0, "other_trait": 0, "not_corpus": 0}
    for s in sents:
        hit = table.get(s)
        if hit is None:
            counts["not_corpus"] += 1
        elif hit == (trait, pole):
            counts["target"] += 1
        elif hit == (trait, opposite(pole)):
            counts["opposite"] += 1
        else:
            counts["other_trait"] += 1
    n = len(sents)
    frac = {f"{k}_fraction": (v / n if n else 0.0) for k, v in counts.items()}
    return {
        **frac,
        "n_sentences": n,
        "trait_score": frac["target_fraction"],
        "fluency": (n - counts["not_corpus"]) / n if n else 0.0,
    }


def perplexity(model: Any, prompt: str, answer: str) -> float:
    """exp(mean NLL) of the answer tokens (and EOS) after the exact prompt text, under `model`."""
    tok = model.tokenizer
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ((nll, n),) = sequence_nlls(model, [(tokenize(tok, prompt), a)])
    return math.exp(nll / n)


class OrganismJudge:
    name = "organism"
    scale = "fractions of sentences (0-1)"

    def __init__(self, model: Any | None = None, trait: str | None = None, pole: str | None = None) -> None:
        self.model = model
        self.trait, self.pole = trait, pole

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            trait, pole = self.trait or r.get("trait"), self.pole or r.get("pole")
            if not trait or not pole:
                where = f"line {r.get('_line', '?')}"
                raise UserError(f"{where}: no trait/pole to judge against; pass --trait and --pole")
            s = attribute(str(r.get("answer", "")), trait, pole)
            if self.model is not None and "prompt" in r:
                s["perplexity"] = perplexity(self.model, r["prompt"], str(r.get("answer", "")))
            out.append(s)
        return out
