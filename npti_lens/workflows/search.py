"""Stage 4b: search. Answer questions under persona prompts and record answer-token statistics.

For each trait and pole: each question gets a persona description of the pole drawn at random
(seeded), the model answers (generation), and a teacher-forced forward over prompt + answer adds
the answer positions to the pole's statistics. Answers are appended to `RUN/answers/` as they come;
statistics are checkpointed every `checkpoint_every` batches, and `resume` continues a killed run
to the same numbers as an uninterrupted one (batches are fixed by question order and batch size).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from npti_lens.core.constants import ANSWERS_DIR, POLES, RUN_CFG_FILE, VERSION, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import (
    fingerprint,
    parse_traits,
    read_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from npti_lens.inputs.prompts import warn_unknown
from npti_lens.inputs.questions import (
    Question,
    draw_personas,
    load_personas,
    load_questions,
    questions_fingerprint,
    trait_question_file,
)
from npti_lens.method.protocol import Protocol, protocol_for
from npti_lens.method.recording import record_batch
from npti_lens.method.stats import Stats, stats_path
from npti_lens.model.generation import GenerateConfig, check_context
from npti_lens.model.load import Model, engine_name, is_engine, model_dims, model_id, model_source
from npti_lens.model.sites import mlp_sites
from npti_lens.workflows.answers import Condition, answer

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


@dataclass
class SearchConfig:
    traits: str = field(default="all", metadata={"help": "'all' or comma-separated trait names"})
    limit: int | None = field(default=None, metadata={"help": "at most this many questions per trait"})
    checkpoint_every: int = field(default=10, metadata={"help": "save statistics every this many batches"})
    seed: int = field(default=0, metadata={"help": "seed of the persona draw"})
    shard: str | None = field(
        default=None,
        metadata={
            "help": "i/N: search the i-th of N contiguous parts of the questions (npti merge joins them)"
        },
    )


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`i/N` as (i, N), 0 <= i < N; None stays None."""
    if spec is None:
        return None
    i, sep, n = str(spec).partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise UserError(f"--shard: {spec!r} is not i/N with 0 <= i < N (e.g. 0/4 ... 3/4)")
    return int(i), int(n)


def shard_slice(n: int, shard: tuple[int, int] | None) -> slice:
    """The questions of a shard: contiguous, sizes differing by at most one."""
    if shard is None:
        return slice(0, n)
    i, k = shard
    return slice(i * n // k, (i + 1) * n // k)


def answers_path(run: str | Path, trait: str, pole: str) -> Path:
    return Path(run) / ANSWERS_DIR / f"{pole_name(trait, pole)}.jsonl"


def _run_identity(
    model: Model, personas_fp: str, gcfg: GenerateConfig, scfg: SearchConfig, proto: Protocol
) -> dict[str, Any]:
    n_layers, d_mlp = model_dims(model)
    return {
        "model": model_id(model),
        **model_source(model),
        "engine": engine_name(model),
        "n_layers": n_layers,
        "d_mlp": d_mlp,
        **proto.record(),
        "personas_fingerprint": personas_fp,
        "generate": asdict(gcfg),
        "seed": scfg.seed,
        "shard": scfg.shard,
    }


def _claim_run(run: Path, identity: dict[str, Any], resume: bool) -> None:
    cfg_path = run / RUN_CFG_FILE
    if cfg_path.is_file():
        old = read_json(cfg_path)
        old_id = {k: old.get(k, "tl" if k == "engine" else None) for k in identity}  # runs before engines: tl
        if old_id != identity:
            changed = sorted(k for k in identity if old_id.get(k) != identity[k])
            raise UserError(
                f"--out: {run} holds a different run (differs in {', '.join(changed)}); "
                "choose a new --out folder"
            )
        if not resume:
            raise UserError(
                f"--out: {run} already holds this run; pass --resume to continue it "
                "or choose a new --out folder"
            )
    elif run.exists() and any(p.name != LOCK_FILE for p in run.iterdir()):
        raise UserError(f"--out: {run} is not empty and holds no search run; choose a new --out folder")
    write_json_atomic(cfg_path, {**identity, "npti_lens_version": VERSION})


def _kept_answers(path: Path, questions: list[str], n_done: int, batch: int) -> list[dict]:
    """Answer lines already written that form whole batches (a killed run may leave a partial one)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: it and what follows are regenerated
    n = len(questions)
    whole = n if len(rows) >= n else n_done + (len(rows) - n_done) // batch * batch
    rows = rows[: max(whole, 0)]
    for i, r in enumerate(rows):
        if r.get("question") != questions[i]:
            raise UserError(
                f"{path}:{i + 1}: answer is for another question; this run's questions "
                "changed, choose a new --out folder"
            )
    if len(rows) < n_done:
        raise UserError(
            f"{path}: holds {len(rows)} answers but the statistics count {n_done}; "
            "the run folder is damaged, choose a new --out folder"
        )
    write_jsonl_atomic(path, rows)
    return rows


def search_pole(
    model: Model,
    run: Path,
    trait: str,
    pole: str,
    questions: list[str],
    personas: list[str],
    gcfg: GenerateConfig,
    scfg: SearchConfig,
    progress: bool = False,
    protocol: Protocol | str | None = None,
    shard: tuple[int, int] | None = None,
) -> Stats:
    """Answer and record one trait pole, continuing from its checkpoint when there is one.

    With `shard` (i, N), only that part of `questions` / `personas` (the whole lists) is searched."""
    proto = protocol_for(model, protocol)
    n_layers, d_mlp = model_dims(model)
    sites = None if is_engine(model) else mlp_sites(model)
    tok = model.tokenizer
    spath, apath = stats_path(run, trait, pole), answers_path(run, trait, pole)
    meta = {
        "model": model_id(model),
        **model_source(model),
        "engine": engine_name(model),
        "n_layers": n_layers,
        "d_mlp": d_mlp,
        "trait": trait,
        "pole": pole,
        **proto.record(),
        "dataset_fingerprint": fingerprint(questions, personas),
        "n_questions_total": len(questions),
    }
    if shard is not None:
        part = shard_slice(len(questions), shard)
        meta["full_dataset_fingerprint"] = meta["dataset_fingerprint"]
        meta["shard"] = f"{shard[0]}/{shard[1]}"
        questions, personas = questions[part], personas[part]
        meta["dataset_fingerprint"] = fingerprint(questions, personas)
    if spath.is_file():
        stats = Stats.load(spath)
        if stats.meta.get("dataset_fingerprint") != meta["dataset_fingerprint"]:
            raise UserError(
                f"{spath}: recorded on other questions or personas (another --limit?); "
                "choose a new --out folder"
            )
        if stats.meta.get("complete"):
            return stats
    else:
        stats = Stats.zeros(n_layers, d_mlp, meta=meta, d_model=int(model.cfg.d_model))
    stats.meta.update(meta)
    n_done = int(stats.meta.get("n_questions", 0))
    kept = _kept_answers(apath, questions, n_done, gcfg.batch_size)
    apath.parent.mkdir(parents=True, exist_ok=True)
    starts = list(range(n_done, len(questions), gcfg.batch_size))
    since_save = 0
    with open(apath, "a", encoding="utf-8") as out:
        for start in tqdm(starts, desc=pole_name(trait, pole), disable=not progress, unit="batch"):
            end = min(start + gcfg.batch_size, len(questions))
            if len(kept) >= end:  # answered before a kill: record them again from the file
                pairs = [
                    (
                        proto.prompt(tok, "search", personality=d, question=q).token_ids,
                        kept[i]["answer_token_ids"],
                    )
                    for i, q, d in zip(
                        range(start, end), questions[start:end], personas[start:end], strict=True
                    )
                ]
            else:
                condition = Condition.search(trait, pole, personas[start:end])
                rows = answer(
                    model, questions[start:end], condition, gcfg, protocol=proto, token_ids=True, checks=False
                )
                pairs = [(r.pop("prompt_token_ids"), r["answer_token_ids"]) for r in rows]
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                out.flush()
                os.fsync(out.fileno())
            if sites is None:  # an engine counts in its own workers, taken at each checkpoint
                model.record(pairs, stats, defer=True)
            else:
                record_batch(model, pairs, stats, sites)
            stats.meta["n_questions"] = end
            since_save += 1
            if since_save >= scfg.checkpoint_every:
                if sites is None:
                    model.take(stats)
                stats.save(spath)
                since_save = 0
    if sites is None:
        model.take(stats)
    stats.meta["n_questions"] = len(questions)
    stats.meta["complete"] = True
    stats.save(spath)
    return stats


def run_search(
    model: Model,
    questions_dir: str | Path,
    personas_file: str | Path,
    out: str | Path,
    scfg: SearchConfig | None = None,
    gcfg: GenerateConfig | None = None,
    *,
    protocol: Protocol | str | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Stats]:
    """Search every requested trait and pole into the run folder `out`; returns the statistics.

    Prompts come from `protocol`'s search stage (default: the model's, see `protocol_for`), and so
    does sampling when `gcfg` is None.
    """
    proto = protocol_for(model, protocol)
    proto.stage("search")  # a protocol without a search stage fails before any work
    scfg, gcfg = scfg or SearchConfig(), gcfg or proto.generate_config("search")
    parse_shard(scfg.shard)
    traits = parse_traits(scfg.traits)
    questions = {t: load_questions(trait_question_file(questions_dir, t), limit=scfg.limit) for t in traits}
    personas = load_personas(personas_file, traits)
    _check_prompts(model, proto, questions, personas, gcfg)
    run = Path(out)
    _claim_run(run, _run_identity(model, fingerprint(sorted(personas.items())), gcfg, scfg, proto), resume)
    with _locked(run):
        return _search_all(model, run, traits, questions, personas, gcfg, scfg, proto, progress)


def _check_prompts(
    model: Model,
    proto: Protocol,
    questions: dict[str, list[Question]],
    personas: dict[tuple[str, str], list[str]],
    gcfg: GenerateConfig,
) -> None:
    """Before any answer: the longest question with the longest persona fits the model's positions,
    and a sample of prompts is readable to its vocabulary (else a warning)."""
    tok = model.tokenizer
    for trait, qs in questions.items():
        for pole in POLES:
            descs = personas[(trait, pole)]
            q = max(qs, key=lambda x: len(x.text))
            longest = proto.prompt(tok, "search", personality=max(descs, key=len), question=q.text)
            check_context(model, [longest.token_ids], gcfg.max_new_tokens, [q.source])
            sample = [proto.prompt(tok, "search", personality=descs[0], question=x.text) for x in qs[:32]]
            warn_unknown(tok, [p.token_ids for p in sample], [x.source for x in qs[:32]])


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    """One search at a time per run folder (a second --resume would redo and race the first)."""
    import fcntl

    with open(run / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"--out: another npti search is writing to {run}; wait for it to finish or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _search_all(
    model: Model,
    run: Path,
    traits: list[str],
    questions: dict[str, list[Question]],
    personas: dict[tuple[str, str], list[str]],
    gcfg: GenerateConfig,
    scfg: SearchConfig,
    proto: Protocol,
    progress: bool,
) -> dict[str, Stats]:
    result = {}
    for trait in traits:
        texts = [q.text for q in questions[trait]]
        log.info(
            "%s: %d questions (fingerprint %s)", trait, len(texts), questions_fingerprint(questions[trait])
        )
        for pole in POLES:
            drawn = draw_personas(personas[(trait, pole)], len(texts), seed=scfg.seed, trait=trait, pole=pole)
            result[pole_name(trait, pole)] = search_pole(
                model, run, trait, pole, texts, drawn, gcfg, scfg, progress=progress, protocol=proto,
                shard=parse_shard(scfg.shard),
            )  # fmt: skip
    return result
