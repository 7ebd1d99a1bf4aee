"""Workflow: monitor answers files, per answer and per token, by teacher forcing.

Each answer's prompt + answer ids run through the model in one forward under `monitor()` (right
padding: real tokens never see padding). Per answer: each readout at the last prompt token (a
forecast, read before a word of the answer exists) and its mean over the answer tokens (positions
whose input is an answer token, as in search), and the per-token trace. The prompt's ids are the
tokenized `prompt` (as every answers row was made); the answer's are the row's `answer_token_ids`,
which re-encoding the text need not give back, so a file without them is refused.

The direction is read at one block: by default the block where the pole's vector best separates
the search answers it was made from (AUROC of the answer-mean projection, pole vs opposite, on
`choose_from` answers per pole of the run), else the blocks `--layer` names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from npti_lens.core.constants import CFG_FILE, VERSION, opposite, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import read_jsonl, to_csv, write_json_atomic, write_jsonl_atomic, write_text_atomic
from npti_lens.evaluation.control import auroc
from npti_lens.inputs.prompts import tokenize
from npti_lens.method.directions import DIRECTION_FILE, Direction
from npti_lens.method.induction import load_pair
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.readout import Readout, monitor
from npti_lens.model.load import Model, model_id, n_positions, pad_batch, same_model_key

MONITOR_FILE = "monitor.jsonl"
SUMMARY_FILE = "summary.csv"
FIGURE_FILE = "monitor.png"
NUMBERS = ("npti_prompt", "npti_answer", "vector_prompt", "vector_answer")
INDUCED = ("npti", "random", "vector")  # conditions that edit the model while it answers


@dataclass
class MonitorConfig:
    batch_size: int = field(default=8, metadata={"help": "answers per teacher-forced forward"})
    layer: str | None = field(
        default=None,
        metadata={"help": "blocks to read the direction at ('12', '10-14'); default: the block where it "
                          "best separates the search answers of --run"},
    )  # fmt: skip
    choose_from: int = field(
        default=32, metadata={"help": "search answers per pole that choose the direction's block"}
    )


def load_readout(
    neurons_dir: str | Path, trait: str, pole: str
) -> tuple[NeuronSet, NeuronSet, Direction | None]:
    """The pole's set, its opposite's, and the pole's direction if its folder holds one."""
    sets = load_pair(neurons_dir, trait, pole)
    folder = Path(neurons_dir) / pole_name(trait, pole)
    direction = Direction.load(folder) if (folder / DIRECTION_FILE).is_file() else None
    return sets[0], sets[1], direction


def read_monitored(path: str | Path, model_key: str | None = None) -> list[dict[str, Any]]:
    """An answers file with the token ids monitoring needs; a row without them, or of another model
    than `model_key`, is one line naming the file, the line and the fix."""
    rows = read_jsonl(path, what="answers (JSON lines with prompt and answer_token_ids)")
    for r in rows:
        where = f"{path}:{r['_line']}"
        ids = r.get("answer_token_ids")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise UserError(
                f"{where}: no answer_token_ids (the answer's generated ids; re-encoding the text need not "
                "give them back); answer again with this version's npti generate / induce / baseline"
            )
        if not isinstance(r.get("prompt"), str):
            raise UserError(f'{where}: no "prompt" text (the prompt the answer was generated from)')
        made = r.get("model")
        if (
            model_key
            and isinstance(made, str)
            and same_model_key(made).lower() != same_model_key(model_key).lower()
        ):
            raise UserError(f"{where}: an answer of {made!r}, but the neuron set is of {model_key!r}; "
                            "monitor a model with its own sets")  # fmt: skip
    return rows


def is_induced(row: dict[str, Any]) -> bool:
    """Answered under an edit (NPTI, a random-neuron control, a steering vector): a strength is set."""
    return row.get("gamma") is not None or str(row.get("condition") or "").startswith(INDUCED)


def _read(model: Model, seqs: list[tuple[list[int], list[int]]], readout: Readout, batch_size: int,
          progress: bool, desc: str) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(index, npti per position, vector per position and block) of every prompt + answer sequence,
    teacher-forced in batches of similar length (right padding: real tokens never see padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        ids, attn = pad_batch(model, [seqs[i][0] + seqs[i][1] for i in idx], left=False)
        with torch.inference_mode(), monitor(model, readout, allow_other_model=True) as trace:
            model.original_model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)
        npti, by_layer = trace.npti, trace.vector_by_layer
        for b, i in enumerate(idx):
            yield i, npti[b], by_layer[b]


def monitor_rows(model: Model, rows: Sequence[dict[str, Any]], readout: Readout, *, batch_size: int = 8,
                 progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """One monitor row per answers row: the four numbers and the per-token trace (rounded)."""
    tok = model.tokenizer
    seqs = [(tokenize(tok, r["prompt"]), list(r["answer_token_ids"])) for r in rows]
    _check_fit(model, rows, seqs)
    out: list[dict[str, Any]] = [{}] * len(rows)
    for i, npti, by_layer in _read(model, seqs, readout, batch_size, progress, "monitor"):
        out[i] = _result(rows[i], seqs[i], npti, by_layer.mean(-1), tok, readout.direction is not None)
    return out


def _check_fit(model: Model, rows: Sequence[dict[str, Any]], seqs: list[tuple[list[int], list[int]]]) -> None:
    """Refuse, before any forward, ids outside the vocabulary and sequences longer than the model's
    positions (answers of another model, or a damaged file)."""
    vocab, limit = int(model.cfg.d_vocab), n_positions(model)
    for r, (p, a) in zip(rows, seqs, strict=True):
        where = f"line {r['_line']}" if "_line" in r else f"question {r.get('question', '?')[:40]!r}"
        if not p:
            raise UserError(f"{where}: an empty prompt; the forecast is read at its last token")
        if a and (min(a) < 0 or max(a) >= vocab):
            raise UserError(f"{where}: answer_token_ids outside the model's vocabulary 0..{vocab - 1}; "
                            "answers of another model?")  # fmt: skip
        if limit is not None and len(p) + len(a) > limit:
            raise UserError(
                f"{where}: prompt and answer hold {len(p) + len(a)} tokens, more than the model's {limit}"
            )


def _result(row: dict[str, Any], seq: tuple[list[int], list[int]], npti: torch.Tensor,
            vector: torch.Tensor, tok: Any, has_vector: bool) -> dict[str, Any]:  # fmt: skip
    n_p, n_a = len(seq[0]), len(seq[1])
    ans = slice(n_p, n_p + n_a)

    def mean(x: torch.Tensor) -> float | None:
        return round(float(x[ans].double().mean()), 6) if n_a else None

    res = {k: row.get(k) for k in ("question", "trait", "pole", "condition", "gamma") if k in row}
    res.update(
        npti_prompt=round(float(npti[n_p - 1]), 6),
        npti_answer=mean(npti),
        vector_prompt=round(float(vector[n_p - 1]), 6) if has_vector else None,
        vector_answer=mean(vector) if has_vector else None,
        n_answer_tokens=n_a,
        induced=is_induced(row),
        trace={
            "tokens": [tok.decode([t]) for t in seq[1]],
            "npti": [round(float(x), 4) for x in npti[ans]],
            "vector": [round(float(x), 3) for x in vector[ans]] if has_vector else None,
        },
    )
    return res


def choose_layer(model: Model, neurons: NeuronSet, opposite_set: NeuronSet, direction: Direction,
                 run: str | Path, n: int = 32, *, batch_size: int = 8,
                 progress: bool = False) -> tuple[int, list[float]]:  # fmt: skip
    """The block where the pole's `direction` best separates the run's search answers (AUROC of the
    answer-mean projection, pole above opposite, on the first `n` answers per pole), and every
    block's AUROC. Ties go to the earlier block."""
    n_layers = direction.n_layers
    allblocks = Readout(neurons, opposite_set, direction, tuple(range(n_layers)))
    means: dict[str, np.ndarray] = {}
    trait, pole = neurons.trait, neurons.pole
    for p in (pole, opposite(pole)):
        path = Path(run) / "answers" / f"{pole_name(trait, p)}.jsonl"
        if not path.is_file():
            raise UserError(f"--run: {run} has no search answers {path.name}; name the search run behind "
                            "the neuron set, or give --layer")  # fmt: skip
        rows = [r for r in read_monitored(path, neurons.model) if r["answer_token_ids"]][:n]
        seqs = [(tokenize(model.tokenizer, r["prompt"]), list(r["answer_token_ids"])) for r in rows]
        means[p] = np.zeros((len(seqs), n_layers))
        for i, _, by_layer in _read(model, seqs, allblocks, batch_size, progress, f"choose block ({p})"):
            means[p][i] = by_layer[len(seqs[i][0]) : sum(map(len, seqs[i]))].double().mean(0).numpy()
    scores = [auroc(means[pole][:, k], means[opposite(pole)][:, k]) for k in range(n_layers)]
    return int(np.argmax(scores)), [round(s, 4) for s in scores]


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per answers file: n and the mean and SD of each number."""
    out = []
    for name, rows in results.items():
        line: dict[str, Any] = {"set": name, "condition": rows[0].get("condition") if rows else None,
                                "n": len(rows), "induced": any(r["induced"] for r in rows)}  # fmt: skip
        for k in NUMBERS:
            xs = np.array([r[k] for r in rows if r[k] is not None], dtype=float)
            line[f"{k}_mean"] = round(float(xs.mean()), 6) if xs.size else None
            line[f"{k}_sd"] = round(float(xs.std(ddof=1)), 6) if xs.size > 1 else None
        out.append(line)
    return out


def run_monitor(model: Model, files: Sequence[str | Path], readout: Readout, out: str | Path,
                cfg: MonitorConfig, *, chosen: dict[str, Any] | None = None,
                progress: bool = False) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Monitor every answers file into `out`: monitor.jsonl (each row with its `set`), summary.csv,
    monitor.png and cfg.json (the readout, the block and how it was chosen)."""
    from npti_lens.evaluation.monitor_validity import trace_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {Path(f).stem: read_monitored(f, model_id(model)) for f in files}
    if len(data) != len(files):
        raise UserError("two answers files share a name; monitor them into separate folders")
    results = {}
    for name, rows in data.items():
        results[name] = [{"set": name, **r} for r in monitor_rows(model, rows, readout, batch_size=cfg.batch_size,
                                                                 progress=progress)]  # fmt: skip
    write_jsonl_atomic(out / MONITOR_FILE, [r for rows in results.values() for r in rows])
    write_text_atomic(out / SUMMARY_FILE, to_csv(summarize(results)))
    trace_figure(results, readout.name, out / FIGURE_FILE)
    induced = sum(r["induced"] for rows in results.values() for r in rows)
    write_json_atomic(out / CFG_FILE, {
        "kind": "npti_lens.monitor", "model": model_id(model), "readout": readout.describe(),
        "vector_layers_chosen": chosen, "files": [str(f) for f in files], "config": cfg.__dict__,
        "induced_answers": induced, "npti_lens_version": VERSION})  # fmt: skip
    return results
