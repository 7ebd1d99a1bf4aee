"""The LLM judge (`npti score --judge openai`): trait expression and fluency, each rated 1-5.

The trait prompt names the trait's six IPIP-NEO facets as the things to look for. Each reply is a
short explanation and then `Rating: [[n]]`. Where the server returns logprobs, the judge also gives
the expected rating under the probabilities of the tokens 1-5 at the rating position, which is
steadier than the sampled digit.

`trait_rating` is the level of the trait (1 = very low, 5 = very high). `trait_score` is the same
rating turned toward the row's pole (6 - rating for a low pole), so that for every judge a higher
`trait_score` means more of the pole asked for.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from npti_lens.errors import UserError
from npti_lens.llm import ChatConfig, ChatRequest, ChatRun, Ledger, complete_all
from npti_lens.score import register_judge

LEDGER_FILE = "judge_ledger.jsonl"

FACETS: dict[str, tuple[str, ...]] = {
    "Openness": (
        "imagination",
        "artistic interests",
        "emotionality",
        "adventurousness",
        "intellect",
        "liberalism",
    ),
    "Conscientiousness": (
        "self-efficacy",
        "orderliness",
        "dutifulness",
        "achievement-striving",
        "self-discipline",
        "cautiousness",
    ),
    "Extraversion": (
        "friendliness",
        "gregariousness",
        "assertiveness",
        "activity level",
        "excitement-seeking",
        "cheerfulness",
    ),
    "Agreeableness": ("trust", "morality", "altruism", "cooperation", "modesty", "sympathy"),
    "Neuroticism": ("anxiety", "anger", "depression", "self-consciousness", "immoderation", "vulnerability"),
}

JUDGE_SYSTEM = "You are a careful psychologist who rates written answers against a rubric. You follow the output format exactly."

TRAIT_PROMPT = """Someone was asked the question below and gave the answer below. Judge how much {trait}, the Big Five personality trait, the answer reveals in the person who wrote it.

Look at these six facets of {trait}, and at how strongly the answer shows each of them or its opposite: {facets}.

Scale:
1 = very low {trait}: the answer clearly shows the opposite of most of these facets
2 = rather low {trait}
3 = neither: the answer says nothing about {trait}, or points both ways
4 = rather high {trait}
5 = very high {trait}: the answer clearly shows most of these facets

Judge only the personality the answer expresses, not its quality, length or grammar.

[Question]
{question}

[Answer]
{answer}

Write two or three sentences on which facets the answer shows and in which direction. Then give your rating on a line of its own, in exactly this form: Rating: [[n]]"""

FLUENCY_PROMPT = """Judge how fluent the answer below is: whether it reads as natural, grammatical, coherent text that responds to the question. Ignore what personality it shows and whether you agree with it.

Scale:
1 = unreadable: broken words, repetition loops or gibberish
2 = hard to read: many errors or it loses the thread
3 = understandable, with clear flaws
4 = fluent, with minor slips
5 = fully fluent and coherent

[Question]
{question}

[Answer]
{answer}

Write one or two sentences on the answer's language, then give your rating on a line of its own, in exactly this form: Rating: [[n]]"""

_RATING = re.compile(r"Rating:\s*\**\s*\[\[\s*([1-5])\s*\]\]", re.IGNORECASE)


def parse_rating(reply: str) -> int | None:
    """The last `Rating: [[n]]` (n in 1-5) in a reply, or None."""
    found = _RATING.findall(reply or "")
    return int(found[-1]) if found else None


def expected_rating(top_logprobs: dict[str, float] | None) -> float | None:
    """Sum of n * p(n) over the tokens 1-5 at the rating position, p renormalised over them."""
    if not top_logprobs:
        return None
    mass: dict[int, float] = {}
    for tok, lp in top_logprobs.items():
        t = tok.strip()
        if t in {"1", "2", "3", "4", "5"}:
            mass[int(t)] = mass.get(int(t), 0.0) + math.exp(lp)
    total = sum(mass.values())
    return sum(n * p for n, p in mass.items()) / total if total > 0 else None


def trait_messages(trait: str, question: str, answer: str) -> ChatRequest:
    text = TRAIT_PROMPT.format(trait=trait, facets=", ".join(FACETS[trait]), question=question, answer=answer)
    return ChatRequest(messages=(("system", JUDGE_SYSTEM), ("user", text)))


def fluency_messages(question: str, answer: str) -> ChatRequest:
    text = FLUENCY_PROMPT.format(question=question, answer=answer)
    return ChatRequest(messages=(("system", JUDGE_SYSTEM), ("user", text)))


def _toward(rating: float | None, pole: str | None) -> float | None:
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
    ):
        self.cfg = cfg or ChatConfig()
        self.ledger = Ledger(Path(out) / LEDGER_FILE)
        self.trait, self.pole = trait, pole
        self.run: ChatRun | None = None
        self.unparsed = 0

    def score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        jobs = []
        for r in rows:
            trait = self.trait or r.get("trait")
            if trait not in FACETS:
                raise UserError(
                    f"line {r.get('_line', '?')}: no trait to judge against; pass --trait or score rows that carry one"
                )
            jobs.append(
                (
                    trait,
                    trait_messages(trait, r["question"], r["answer"]),
                    fluency_messages(r["question"], r["answer"]),
                )
            )
        run = complete_all([req for _, t, f in jobs for req in (t, f)], self.cfg, self.ledger)
        self.run = run
        out = []
        for r, (trait, treq, freq) in zip(rows, jobs, strict=True):
            pole = self.pole or r.get("pole")
            row: dict[str, Any] = {"judge_model": self.cfg.model, "judged_trait": trait}
            errors = []
            for name, req in (("trait", treq), ("fluency", freq)):
                key = req.key(self.cfg)
                entry = run.replies.get(key)
                rating = parse_rating(entry["reply"]) if entry else None
                expected = expected_rating(entry.get("rating_logprobs")) if entry else None
                if entry is None:
                    errors.append(f"{name}: {run.failed.get(key, 'no reply')}")
                elif rating is None:
                    self.unparsed += 1
                    errors.append(f"{name}: reply has no 'Rating: [[n]]'")
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
            f"{self.unparsed} replies without a rating"
        )


@register_judge("openai")
def _make(**kwargs: Any) -> OpenAIJudge:
    return OpenAIJudge(**kwargs)
