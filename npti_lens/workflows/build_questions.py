"""`npti data build`: situational questions from facet items x everyday topics, as in the paper.

For every facet of an inventory (its keyed statements), an OpenAI-compatible model is asked for
one question per (statement, topic) pair: an everyday situation about the topic whose answer shows
where a person stands on the facet. Pairs are taken round-robin over statements and then topics,
in rounds, until a facet has `per_facet` distinct questions or its pairs run out. Questions are
deduplicated within each trait (same words after normalising case and punctuation, or the same
word set for 80% within a facet). Every reply goes to the ledger first (`build_ledger.jsonl`), so a
killed or failed build resumes without paying again. Output: the reference layout, `search/` and
`test/` of `{Trait}.json` lines with `question`, `BFI` (trait), `tag` (facet name), `facet` (the
statement), `topic` and `sign`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npti_lens.core.constants import CFG_FILE, TRAITS
from npti_lens.core.errors import UserError
from npti_lens.core.files import write_json_atomic, write_jsonl_atomic
from npti_lens.inputs import DATA_DIR
from npti_lens.inputs.inventory import Item, load_inventory
from npti_lens.judges.client import ChatConfig, ChatRequest, Ledger, complete_all

SHIPPED_TOPICS = DATA_DIR / "topics.txt"
BUILD_LEDGER = "build_ledger.jsonl"

BUILD_PROMPT = """I am building a set of everyday questions that let a person's personality show in how they answer.

Write one question about this topic: {topic}.
The question should put the reader in a concrete, ordinary situation where their answer reveals where they stand on "{facet_name}", a facet of {trait}. A person who agrees with the statement "{statement}" would answer it differently from one who disagrees.

Rules: address the reader as "you"; one or two sentences; anyone can answer it; do not mention personality, traits, the facet or the statement; do not suggest an answer.
Reply with the question only, on one line that starts with "Question:"."""


@dataclass
class BuildConfig:
    facets: str | None = field(
        default=None,
        metadata={"help": "inventory CSV whose facet statements seed the questions; none: the shipped one"},
    )
    topics: str | None = field(
        default=None, metadata={"help": "text file, one everyday topic per line; none: the shipped 16"}
    )
    per_facet: int = field(default=20, metadata={"help": "distinct questions to make per facet"})
    test_share: float = field(default=0.2, metadata={"help": "share of each trait's questions put in test/"})
    seed: int = field(default=0, metadata={"help": "seed of the search/test split"})


@dataclass
class BuildResult:
    questions: dict[str, list[dict[str, Any]]]
    short: dict[str, int]  # facet -> questions missing
    sent: int
    retries: int
    cached: int
    failed: int
    rejected: int  # replies that were duplicates or held no question


def load_topics(path: str | Path | None) -> list[str]:
    path = Path(path) if path is not None else SHIPPED_TOPICS
    if not path.is_file():
        raise UserError(f"--topics: {path} not found (a text file with one topic per line)")
    topics = [
        t.strip()
        for t in path.read_text(encoding="utf-8").splitlines()
        if t.strip() and not t.startswith("#")
    ]
    if not topics:
        raise UserError(f"--topics: {path} has no topics")
    return topics


def parse_question(reply: str) -> str | None:
    found = re.findall(r"Question:\s*(.+)", reply or "")
    text = (found[-1] if found else (reply or "")).strip().strip('"').strip()
    return text if len(text.split()) >= 3 else None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def build_questions(cfg: BuildConfig, chat: ChatConfig, out: str | Path) -> BuildResult:
    """Make, deduplicate and split the questions; write them in the reference layout under `out`."""
    if cfg.per_facet < 1:
        raise UserError(f"--per-facet: {cfg.per_facet} must be at least 1")
    if not 0 <= cfg.test_share < 1:
        raise UserError(f"--test-share: {cfg.test_share} must be in [0, 1)")
    out = Path(out)
    chat = dataclasses.replace(chat, logprobs=False)  # a question needs no rating probabilities
    items, topics = load_inventory(cfg.facets), load_topics(cfg.topics)
    by_facet: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for it in items:
        by_facet[(it.domain, it.facet_name or str(it.facet))].append(it)
    ledger = Ledger(out / BUILD_LEDGER)
    kept: dict[tuple[str, str], list[dict[str, Any]]] = {f: [] for f in by_facet}
    seen: dict[str, set[str]] = defaultdict(set)
    next_pair = dict.fromkeys(by_facet, 0)
    totals = {"sent": 0, "retries": 0, "cached": 0, "failed": 0, "rejected": 0}
    last_error = ""
    while True:
        wanted = []
        for f, its in by_facet.items():
            n_pairs = len(its) * len(topics)
            need = cfg.per_facet - len(kept[f])
            while need > 0 and next_pair[f] < n_pairs:
                j = next_pair[f]
                it, topic = its[j % len(its)], topics[(j // len(its)) % len(topics)]
                text = BUILD_PROMPT.format(topic=topic, facet_name=f[1], trait=it.domain, statement=it.text)
                wanted.append((f, it, topic, ChatRequest(messages=(("user", text),))))
                next_pair[f] += 1
                need -= 1
        if not wanted:
            break
        run = complete_all([w[3] for w in wanted], chat, ledger)
        totals["sent"] += run.sent
        totals["retries"] += run.retries
        totals["cached"] += run.cached
        totals["failed"] += len(run.failed)
        if run.failed:
            last_error = next(iter(run.failed.values()))
            break  # write nothing half-made; a rerun resumes from the ledger
        for f, it, topic, req in wanted:
            q = parse_question(run.replies[req.key(chat)]["reply"])
            if q is None or _is_duplicate(q, it.domain, kept[f], seen):
                totals["rejected"] += 1
                continue
            seen[it.domain].add(_norm(q))
            kept[f].append(
                {
                    "question": q,
                    "BFI": it.domain,
                    "tag": f[1],
                    "facet": it.text,
                    "topic": topic,
                    "sign": it.keyed,
                }
            )
    if totals["failed"]:
        raise UserError(
            f"{totals['failed']} requests failed after retries (last error: {last_error}); the {len(ledger.entries)} replies so far are kept "
            f"in {ledger.path}; rerun the same command to continue"
        )
    questions: dict[str, list[dict[str, Any]]] = {t: [] for t in TRAITS}
    for f, qs in kept.items():
        questions[f[0]].extend(qs)
    _write(out, questions, cfg, chat)
    short = {f"{f[0]}/{f[1]}": cfg.per_facet - len(qs) for f, qs in kept.items() if len(qs) < cfg.per_facet}
    return BuildResult(questions=questions, short=short, **totals)


def _is_duplicate(q: str, trait: str, same_facet: list[dict[str, Any]], seen: dict[str, set[str]]) -> bool:
    if _norm(q) in seen[trait]:
        return True
    words = set(_norm(q).split())
    for other in same_facet:
        ow = set(_norm(other["question"]).split())
        if len(words & ow) / max(1, len(words | ow)) >= 0.8:
            return True
    return False


def _write(out: Path, questions: dict[str, list[dict[str, Any]]], cfg: BuildConfig, chat: ChatConfig) -> None:
    for trait, qs in questions.items():
        if not qs:
            continue
        order = list(range(len(qs)))
        random.Random(f"{cfg.seed}:{trait}").shuffle(order)
        n_test = round(len(qs) * cfg.test_share)
        test_idx = set(order[:n_test])
        write_jsonl_atomic(
            out / "search" / f"{trait}.json", [q for i, q in enumerate(qs) if i not in test_idx]
        )
        if test_idx:  # an empty file would not load: no test/ file when nothing is held out
            write_jsonl_atomic(out / "test" / f"{trait}.json", [q for i, q in enumerate(qs) if i in test_idx])
    write_json_atomic(
        out / CFG_FILE,
        {"build": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "model": chat.model, "base_url": chat.base_url,
         "temperature": chat.temperature, "counts": {t: len(q) for t, q in questions.items()}},
    )  # fmt: skip
