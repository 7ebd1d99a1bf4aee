"""PersonalityBench files: questions and personas as JSON lines, checked line by line.

Questions: a folder with `{Trait}.json` files (or one file) of lines `{"question": ...}`.
Personas: lines mapping the 10 pole keys (`Openness`, `Openness_reversed`, ...) to descriptions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from npti_lens.core.constants import TRAITS, reference_key
from npti_lens.core.errors import UserError
from npti_lens.core.files import fingerprint, read_jsonl

# The project's own sample set (written for it from the IPIP-NEO facet descriptions): 24
# situational questions per trait (16 in search/, 8 in test/, each tagged with its facet) and
# 10 persona descriptions per pole in personas.jsonl.
SAMPLE_DIR = Path(__file__).parent / "data" / "sample"
SAMPLE_PERSONAS = SAMPLE_DIR / "personas.jsonl"


@dataclass(frozen=True)
class Question:
    text: str
    source: str  # file:line, for messages


def load_questions(path: str | Path, *, limit: int | None = None) -> list[Question]:
    """Questions of one JSON-lines file, in file order, at most `limit`."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"{limit} is not 1 or more (leave it out for every question)", field="limit")
    rows = read_jsonl(path, what='JSON lines like {"question": "..."}')
    out = []
    for r in rows:
        q = r.get("question")
        if not isinstance(q, str) or not q.strip():
            raise UserError(f'{path}:{r["_line"]}: no "question" text; each line needs {{"question": "..."}}')
        out.append(Question(text=q.strip(), source=f"{path}:{r['_line']}"))
    return out[:limit] if limit is not None else out


def trait_question_file(folder: str | Path, trait: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--questions: {folder} is not a folder of {{Trait}}.json files")
    for name in (f"{trait}.json", f"{trait}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"--questions: {folder} has no {trait}.json (JSON lines of questions)")


def load_personas(path: str | Path, traits: list[str] | None = None) -> dict[tuple[str, str], list[str]]:
    """Descriptions per (trait, pole) for the traits asked; a line missing a pole key is an error."""
    path = Path(path)
    rows = read_jsonl(path, what="JSON lines of persona descriptions")
    traits = traits or list(TRAITS)
    out: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for trait in traits:
            for pole in ("high", "low"):
                key = reference_key(trait, pole)
                desc = r.get(key)
                if not isinstance(desc, str) or not desc.strip():
                    raise UserError(
                        f"{path}:{r['_line']}: no description for pole key {key!r} "
                        f"(each line maps {trait!r} and {trait + '_reversed'!r} to text)"
                    )
                out.setdefault((trait, pole), []).append(desc.strip())
    return out


def draw_personas(descriptions: list[str], n: int, *, seed: int, trait: str, pole: str) -> list[str]:
    """One description per question, drawn at random (seeded per trait pole), as the reference does."""
    rng = random.Random(f"{seed}:{trait}:{pole}")
    return [rng.choice(descriptions) for _ in range(n)]


def questions_fingerprint(questions: list[Question]) -> str:
    return fingerprint([q.text for q in questions])


def load_personality_bench(
    source: str | Path, split: str = "test", traits: list[str] | None = None
) -> dict[str, list[dict]]:
    """PersonalityBench questions per trait, through the `datasets` library.

    `source` is a local folder in the reference layout (`search/` and `test/` of `{Trait}.json`
    JSON lines; search lines may carry BFI, tag, facet, topic, sign) or a Hugging Face dataset id
    whose configurations are the traits and whose splits are `search` / `test` (that route needs
    the hub and is not exercised offline). Rows keep every field of the file.
    """
    import datasets

    traits = traits or list(TRAITS)
    if split not in ("search", "test"):
        raise UserError(f"--split: {split!r} is not search or test")
    folder = Path(source)
    out: dict[str, list[dict]] = {}
    for trait in traits:
        if folder.exists():
            path = trait_question_file(folder / split, trait)
            load_questions(path)  # line-numbered errors for bad lines before datasets sees them
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(str(source), trait, split=split)
        out[trait] = [dict(row) for row in ds]
    return out
