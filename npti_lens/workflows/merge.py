"""Workflow: join the shards of a search (`npti search --shard i/N`) into one run (`npti merge`).

Data parallelism for the search: N machines (or GPUs) each search a contiguous part of the questions
into their own run folder; the statistics add up exactly (integer counts, float64 sums), so the
merged run is the one an unsharded search would have written, up to the summation order of the sums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npti_lens.core.constants import ANSWERS_DIR, RUN_CFG_FILE, STATS_DIR, VERSION
from npti_lens.core.errors import UserError
from npti_lens.core.files import read_json, write_json_atomic, write_jsonl_atomic
from npti_lens.method.stats import Stats
from npti_lens.workflows.search import parse_shard


def merge_runs(runs: list[str | Path], out: str | Path) -> dict[str, Stats]:
    """Join the shards 0/N ... N-1/N of one search into the run `out`: statistics summed (exactly:
    counts and float64 sums), answers in question order; the result is the unsharded run's."""
    if not runs:
        raise UserError("npti merge: name the shard run folders")
    cfgs = []
    for r in runs:
        path = Path(r) / RUN_CFG_FILE
        if not path.is_file():
            raise UserError(f"{r}: no {RUN_CFG_FILE}; not a search run folder")
        cfgs.append(read_json(path))
    shards = [parse_shard(c.get("shard")) for c in cfgs]
    if any(s is None for s in shards):
        raise UserError(f"{runs[[s is None for s in shards].index(True)]}: not a shard (run without --shard)")
    n = shards[0][1]
    if sorted(s for s in shards) != [(i, n) for i in range(n)]:  # type: ignore[misc] - none are None here
        got = ", ".join(f"{i}/{k}" for i, k in shards)  # type: ignore[misc]
        raise UserError(f"npti merge: shards {got} are not each of 0/{n} ... {n - 1}/{n} once")

    def same(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in ("shard", "npti_lens_version")}

    for r, c in zip(runs, cfgs, strict=True):
        if same(c) != same(cfgs[0]):
            changed = sorted(
                k for k in set(same(c)) | set(same(cfgs[0])) if same(c).get(k) != same(cfgs[0]).get(k)
            )
            raise UserError(f"{r}: a shard of another search (differs in {', '.join(changed)})")
    order = [runs[shards.index((i, n))] for i in range(n)]  # type: ignore[arg-type]
    out = Path(out)
    if (out / RUN_CFG_FILE).exists():
        raise UserError(f"--out: {out} already holds a run; choose a new --out folder")
    names = sorted(p.stem for p in (Path(order[0]) / STATS_DIR).glob("*.safetensors"))
    merged = {}
    for name in names:
        parts = []
        for r in order:
            path = Path(r) / STATS_DIR / f"{name}.safetensors"
            if not path.is_file():
                raise UserError(f"{r}: has no statistics for {name}; finish that shard first")
            st = Stats.load(path)
            if not st.meta.get("complete"):
                raise UserError(f"{path}: shard unfinished; finish it with npti search --resume")
            parts.append(st)
        total = parts[0]
        for st in parts[1:]:
            total = total + st
        meta = {k: v for k, v in parts[0].meta.items() if k not in ("shard", "full_dataset_fingerprint")}
        meta.update(
            dataset_fingerprint=parts[0].meta["full_dataset_fingerprint"],
            n_questions=sum(int(st.meta["n_questions"]) for st in parts),
            merged_from=[str(r) for r in order],
        )
        total.meta = meta
        merged[name] = total
        rows = []
        for r in order:
            rows += read_jsonl_rows(Path(r) / ANSWERS_DIR / f"{name}.jsonl")
        write_jsonl_atomic(out / ANSWERS_DIR / f"{name}.jsonl", rows)
        total.save(out / STATS_DIR / f"{name}.safetensors")
    write_json_atomic(out / RUN_CFG_FILE, {**same(cfgs[0]), "shard": None, "npti_lens_version": VERSION})
    return merged


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: missing; the shard is incomplete")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
