"""Workflow: score an answers file with a judge into a folder (`scores.jsonl`, `summary.csv`, `cfg.json`).

Judges are named in `npti_lens.judges.registry` as lazy "module:factory" strings; this module
hands out one by name, importing only that judge's module. A score folder records
which file and judge made it: the same file may be scored into it again (that resumes an LLM
judge's ledger), another file only with `overwrite`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npti_lens.core.errors import UserError
from npti_lens.core.files import check_writable, fingerprint, read_json, write_json_atomic
from npti_lens.judges.registry import (
    SCORE_CFG_FILE,
    SCORES_FILE,
    Judge,
    judge_factory,
    registered,
    score_rows,
    write_scores,
)
from npti_lens.workflows.answers import read_answers


def judges() -> list[str]:
    return registered()


def make_judge(name: str, **kwargs: Any) -> Judge:
    """A registered judge by name (organism, openai) built with `kwargs`."""
    factory = judge_factory(name)
    if factory is None:
        raise UserError(f"--judge: unknown judge {name!r}; choose {' or '.join(judges())}")
    return factory(**kwargs)


@dataclass
class ScoreResult:
    scored: list[dict[str, Any]]
    scores: Path
    summary: Path
    judge: Judge

    @property
    def failed(self) -> int:
        """Answers left without a rating (named in their `judge_error`)."""
        return sum(1 for r in self.scored if r.get("judge_error"))


def claim_score_folder(out: str | Path, source: dict[str, Any], overwrite: bool) -> Path:
    """`out` for scores of `source`: refused if it holds another file's scores (unless `overwrite`)."""
    out = check_writable(out, folder=True)
    if (out / SCORE_CFG_FILE).is_file() or (out / SCORES_FILE).is_file():
        old = read_json(out / SCORE_CFG_FILE) if (out / SCORE_CFG_FILE).is_file() else {}
        if old != source and not overwrite:
            raise UserError(
                f"--out: {out} holds scores of {old.get('generations', 'another file')} "
                f"({old.get('judge', '?')} judge); pass --overwrite or choose another folder"
            )
    return out


def score_file(
    generations: str | Path,
    out: str | Path,
    judge: str = "organism",
    *,
    trait: str | None = None,
    pole: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **judge_kwargs: Any,
) -> ScoreResult:
    """Score every answer of `generations` into `out` with the judge named `judge`.

    `trait` / `pole` judge every row against that pole and are recorded in its row (rows of
    `npti generate` carry none). `judge_kwargs` go to the judge (organism: `model`; openai: `cfg`,
    `protocol`); the openai judge keeps its ledger in `out`.
    """
    rows = read_answers(generations)
    for r in rows:
        r.update({k: v for k, v in (("trait", trait), ("pole", pole)) if v is not None})
    source = {
        "generations": str(generations),
        "generations_fingerprint": fingerprint([{k: v for k, v in r.items() if k != "_line"} for r in rows]),
        "judge": judge,
    }
    folder = claim_score_folder(out, source, overwrite)
    if judge == "openai":
        judge_kwargs.setdefault("out", folder)
    made = make_judge(judge, trait=trait, pole=pole, **judge_kwargs)
    if hasattr(made, "progress"):
        made.progress = progress  # type: ignore[attr-defined] - the openai judge's request bar
    write_json_atomic(folder / SCORE_CFG_FILE, source)
    scored = score_rows(rows, made)
    scores, summary = write_scores(folder, scored)
    return ScoreResult(scored, scores, summary, made)
