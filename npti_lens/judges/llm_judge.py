"""The LLM judge (`npti score --judge openai`): trait expression and fluency, each rated 1-5.

The prompts and how a rating is read come from the protocol (`npti_lens.method.protocol`). Under `npti`
(the default) they are the released code's, byte for byte: one user message per prompt, the trait
template with the trait's factor list, the fluency template with the answer only; the rating is the
n of the last `[[n]]`. Under `lens`, npti_lens 0.1's anchored rubric behind a system message.
Where the server returns logprobs, the judge also gives the expected rating under the probabilities
of the tokens 1-5 at the rating position, which is steadier than the sampled digit.

`trait_rating` is the level of the trait (1 = very low, 5 = very high), as released, and the raw
reply is kept beside it. `trait_score` is derived: the rating turned toward the row's pole
(6 - rating for a low pole), so that for every judge a higher `trait_score` means more of the pole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from npti_lens.core.constants import RATING_DIGITS, TRAITS
from npti_lens.core.errors import UserError
from npti_lens.judges.client import ChatConfig, ChatRequest, ChatRun, Ledger, api_key, complete_all
from npti_lens.method.protocol import JudgePrompts, Protocol, load_protocol

LEDGER_FILE = "judge_ledger.jsonl"


def _prompts(prompts: JudgePrompts | None) -> JudgePrompts:
    return prompts if prompts is not None else load_protocol().judge


def parse_rating(reply: str, prompts: JudgePrompts | None = None) -> int | None:
    """The rating a reply gives, read as the protocol says (npti: the last `[[n]]`, n in 1-5), or None."""
    return _prompts(prompts).rating(reply)


MIN_DIGIT_MASS = 0.5  # below this the rating position is not a rating (a small model's ramble)


def digit_mass(top_logprobs: dict[str, float] | None) -> float:
    """Probability the server's top log-probs put on the tokens 1-5 at the rating position."""
    return float(
        sum(math.exp(lp) for tok, lp in (top_logprobs or {}).items() if tok.strip() in RATING_DIGITS)
    )


def rating_from_logprobs(
    top_logprobs: dict[str, float] | None, min_mass: float = MIN_DIGIT_MASS
) -> float | None:
    """Sum of n * p(n) over the tokens 1-5 at the rating position, p renormalised over them;
    None where those tokens hold less than `min_mass` of the probability (counted by the judge)."""
    if not top_logprobs or digit_mass(top_logprobs) < min_mass:
        return None
    mass: dict[int, float] = {}
    for tok, lp in top_logprobs.items():
        t = tok.strip()
        if t in RATING_DIGITS:
            mass[int(t)] = mass.get(int(t), 0.0) + math.exp(lp)
    total = sum(mass.values())
    return sum(n * p for n, p in mass.items()) / total if total > 0 else None


def _request(prompts: JudgePrompts, text: str) -> ChatRequest:
    if prompts.system is None:
        return ChatRequest(messages=(("user", text),))
    return ChatRequest(messages=(("system", prompts.system), ("user", text)))


def trait_messages(
    trait: str, question: str, answer: str, prompts: JudgePrompts | None = None
) -> ChatRequest:
    p = _prompts(prompts)
    return _request(p, p.trait.format(BFI=trait, factors=p.factors[trait], question=question, answer=answer))


def fluency_messages(question: str, answer: str, prompts: JudgePrompts | None = None) -> ChatRequest:
    p = _prompts(prompts)
    return _request(p, p.fluency.format(question=question, answer=answer))


def _toward(rating: int | float | None, pole: str | None) -> int | float | None:
    if rating is None:
        return None
    return 6 - rating if pole == "low" else rating


class OpenAIJudge:
    """Judge through any OpenAI-compatible chat server; its ledger lives in the output folder."""

    name = "openai"
    scale = "1-5 ratings (trait_score oriented toward the row's pole)"

    def __init__(
        self,
        out: str | Path,
        cfg: ChatConfig | None = None,
        trait: str | None = None,
        pole: str | None = None,
        protocol: Protocol | str | None = None,
    ):
        self.protocol = load_protocol(protocol)
        self.prompts = self.protocol.judge  # a protocol without judge prompts fails here
        self.cfg = cfg or ChatConfig()
        api_key(self.cfg.base_url)  # a missing key fails here, before anything is written
        self.ledger = Ledger(Path(out) / LEDGER_FILE)
        self.trait, self.pole = trait, pole
        self.run: ChatRun | None = None
        self.progress = False  # a progress bar over the requests (the CLI turns it on)
        self.unparsed = 0
        self.low_mass = 0  # ratings whose digits held < MIN_DIGIT_MASS: no expected rating

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        jobs = []
        for r in rows:
            trait = self.trait or r.get("trait")
            if trait not in TRAITS:
                raise UserError(
                    f"line {r.get('_line', '?')}: no trait to judge against; pass --trait or score rows that carry one"
                )
            jobs.append(
                (
                    trait,
                    trait_messages(trait, r["question"], r["answer"], self.prompts),
                    fluency_messages(r["question"], r["answer"], self.prompts),
                )
            )
        run = complete_all(
            [req for _, t, f in jobs for req in (t, f)], self.cfg, self.ledger, progress=self.progress
        )
        self.run = run
        out = []
        for r, (trait, treq, freq) in zip(rows, jobs, strict=True):
            pole = self.pole or r.get("pole")
            row: dict[str, Any] = {
                "judge_model": self.cfg.model,
                "judged_trait": trait,
                "judge_protocol": self.protocol.name,
                "judge_protocol_hash": self.protocol.hash,
            }
            errors = []
            for name, req in (("trait", treq), ("fluency", freq)):
                key = req.key(self.cfg)
                entry = run.replies.get(key)
                rating = self.prompts.rating(entry["reply"]) if entry else None
                lps = entry.get("rating_logprobs") if entry else None
                expected = rating_from_logprobs(lps)
                if lps and expected is None:
                    self.low_mass += 1
                if entry is None:
                    errors.append(f"{name}: {run.failed.get(key, 'no reply')}")
                elif rating is None:
                    self.unparsed += 1
                    errors.append(f"{name}: reply has no rating ({self.prompts.rating_pattern})")
                row[f"{name}_reply"] = entry["reply"] if entry else None
                row[f"{name}_rating"] = rating
                row[f"{name}_rating_expected"] = expected
            row["trait_score"] = _toward(row["trait_rating"], pole)
            row["trait_score_expected"] = _toward(row["trait_rating_expected"], pole)
            row["fluency"] = row.pop("fluency_rating")
            row["fluency_expected"] = row.pop("fluency_rating_expected")
            row["judge_error"] = "; ".join(errors) or None
            out.append(row)
        return out

    def report(self) -> str:
        run = self.run
        if run is None:
            return "nothing scored"
        return (
            f"{len(run.replies) + len(run.failed)} distinct prompts: {run.cached} from the ledger, "
            f"{run.sent} requests sent ({run.retries} retries), {len(run.failed)} failed, "
            f"{self.unparsed} replies without a rating, {self.low_mass} expected ratings dropped "
            f"(digits held < {MIN_DIGIT_MASS:g} of the probability)"
        )
