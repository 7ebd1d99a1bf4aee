"""Workflow: answer questions under a condition, and the answers file every front end shares.

A `Condition` says how the model answers: as it is (`none`), under an NPTI induction (`npti`) or a
random-neuron control (`random`), or under a prompt baseline (`simple`, `p2`, `p2-as-written`), or
under persona prompts as in search (`search`). `answer()` renders each question with the protocol's
template of the condition's stage, checks the prompts fit the model, generates, and returns one row
per question in the answers format (`question`, `prompt`, `answer`, `trait`, `pole`, `condition`,
`gamma`, `n_answer_tokens`, `answer_token_ids`, `hit_eos`, `protocol`, `protocol_hash`, plus the
condition's extras).
The CLI (generate, induce, baseline, analyze ablation), search, the demo and the notebooks all
answer through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.errors import UserError
from npti_lens.core.files import read_jsonl, write_jsonl_atomic
from npti_lens.inputs.prompts import warn_unknown
from npti_lens.method.directions import Direction
from npti_lens.method.directions import steer as steer_with
from npti_lens.method.induction import InduceConfig, check_fits, induce
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.protocol import Protocol, protocol_for
from npti_lens.model.generation import GenerateConfig, check_context, generate
from npti_lens.model.load import Model, engine_name, is_engine, model_id

# Condition kind -> the protocol stage its prompts use.
STAGE_OF = {
    "none": "neutral",
    "npti": "neutral",
    "random": "neutral",
    "simple": "simple",
    "p2": "p2",
    "p2-as-written": "p2-as-written",
    "search": "search",
    "vector": "neutral",
    "random-vector": "neutral",
}
BASELINES = ("simple", "p2", "p2-as-written")

Pair = tuple[NeuronSet, NeuronSet | None]


@dataclass(frozen=True)
class Condition:
    """How the model answers. Build one with the class methods; `name` labels its rows."""

    kind: str
    trait: str | None = None
    pole: str | None = None
    pairs: tuple[Pair, ...] = ()  # npti / random: (target set, opposite set or None)
    induce_cfg: InduceConfig | None = None
    personalities: tuple[str, ...] = ()  # simple / p2 / search: the persona text, one per question
    name: str = ""  # the rows' `condition` (default: kind)
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for every row
    direction: Direction | None = None  # vector / random-vector: the direction added
    coef: float = 0.0
    layers: tuple[int, ...] | None = None  # the layers steered (None: all)

    def __post_init__(self) -> None:
        if self.kind not in STAGE_OF:
            raise UserError(f"condition: unknown kind {self.kind!r}; choose one of {', '.join(STAGE_OF)}")

    @property
    def stage(self) -> str:
        return STAGE_OF[self.kind]

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def gamma(self) -> float | None:
        """The strength: NPTI's gamma, or a vector's coefficient."""
        if self.direction is not None:
            return self.coef
        return self.induce_cfg.gamma if self.pairs and self.induce_cfg is not None else None

    @classmethod
    def none(cls, trait: str | None = None, pole: str | None = None, **kw: Any) -> Condition:
        return cls("none", trait, pole, **kw)

    @classmethod
    def npti(cls, pairs: Sequence[Pair], cfg: InduceConfig, **kw: Any) -> Condition:
        """The induction of the first pair's pole (several pairs: several traits at once)."""
        return cls("npti", pairs[0][0].trait, pairs[0][0].pole, tuple(pairs), cfg, **kw)

    @classmethod
    def random(
        cls, pairs: Sequence[Pair], cfg: InduceConfig, *, trait: str, pole: str, **kw: Any
    ) -> Condition:
        """A random-neuron control (`npti_lens.method.induction.random_control` sets) labelled with the pole it matches."""
        return cls("random", trait, pole, tuple(pairs), cfg, **kw)

    @classmethod
    def baseline(
        cls, method: str, trait: str, pole: str, personalities: Sequence[str], **kw: Any
    ) -> Condition:
        """A prompt baseline: `simple` (personalities: the adjective phrase per question) or a P2 form."""
        if method not in BASELINES:
            raise UserError(f"--method: unknown baseline {method!r}; choose {', '.join(BASELINES)}")
        return cls(method, trait, pole, personalities=tuple(personalities), **kw)

    @classmethod
    def vector(
        cls,
        direction: Direction,
        coef: float,
        layers: Sequence[int] | None = None,
        *,
        random: bool = False,
        **kw: Any,
    ) -> Condition:
        """The direction baseline: `coef` times the pole's mean-difference vector added on `layers`."""
        kind = "random-vector" if random else "vector"
        return cls(
            kind, direction.trait, direction.pole, direction=direction, coef=float(coef),
            layers=None if layers is None else tuple(layers), **kw,
        )  # fmt: skip

    @classmethod
    def search(cls, trait: str, pole: str, personalities: Sequence[str], **kw: Any) -> Condition:
        return cls("search", trait, pole, personalities=tuple(personalities), **kw)


def baseline_condition(
    method: str,
    trait: str,
    pole: str,
    n: int,
    protocol: Protocol | str | None = None,
    *,
    personas: str | Path | None = None,
    seed: int = 0,
) -> Condition:
    """The prompt baseline `method` for `n` questions: the protocol's adjective phrase (simple) or a
    description of the pole drawn per question from `personas` (p2, p2-as-written)."""
    from npti_lens.inputs.questions import draw_personas, load_personas
    from npti_lens.method.protocol import load_protocol

    if method not in BASELINES:
        raise UserError(f"--method: unknown baseline {method!r}; choose {', '.join(BASELINES)}")
    proto = load_protocol(protocol)
    proto.stage(method)  # a stage the protocol lacks fails here
    if method == "simple":
        texts = [proto.adjective(trait, pole)] * n
    else:
        if not personas:
            raise UserError(
                f"--personas: the {method} baseline needs a persona file (JSON lines per pole key)"
            )
        descs = load_personas(personas, [trait])[(trait, pole)]
        texts = draw_personas(descs, n, seed=seed, trait=trait, pole=pole)
    return Condition.baseline(method, trait, pole, texts, extra={"method": method})


def intervention(
    model: TransformerBridge,
    condition: Condition,
    protocol: Protocol | str | None = None,
    *,
    allow_other_model: bool = False,
) -> Any:
    """The context manager that applies `condition`'s intervention (a no-op for prompt conditions)."""
    if condition.direction is not None:
        return steer_with(
            model, condition.direction, condition.coef, condition.layers, allow_other_model=allow_other_model
        )
    if condition.pairs:
        cfg = condition.induce_cfg or protocol_for(model, protocol).induce_config()
        return induce(model, condition.pairs, cfg, allow_other_model=allow_other_model)
    return contextlib.nullcontext()


def answer(
    model: Model,
    questions: Sequence[Any],
    condition: Condition,
    gcfg: GenerateConfig | None = None,
    *,
    protocol: Protocol | str | None = None,
    allow_other_model: bool = False,
    token_ids: bool = False,
    checks: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One answers row per question (a str or a `Question`) under `condition`.

    `model`: a TransformerBridge (the TransformerLens loop) or an engine such as
    `npti_lens.vllm.engine.VLLMEngine` (its rows carry `engine`); same token ids in, same rows out.
    Prompts and, when `gcfg` is None, sampling come from `protocol` (default: the model's). Neuron
    sets are checked against the model and prompts against its positions before anything runs.
    Rows keep the answer's token ids (`answer_token_ids`: monitoring and search read them; decoding
    and re-encoding the text need not give them back); with `token_ids`, the prompt's too. `checks=False`
    skips the context and unknown-token checks (for a caller that made them once for many calls).
    """
    proto = protocol_for(model, protocol)
    gcfg = gcfg or proto.generate_config(condition.stage)
    texts, prompts = _prepare(model, questions, condition, gcfg, proto, allow_other_model, checks)
    gens = _generate(
        model, [p.token_ids for p in prompts], gcfg, condition, proto, allow_other_model, progress
    )
    return _rows(model, texts, prompts, gens, condition, proto, token_ids)


def _prepare(
    model: Model,
    questions: Sequence[Any],
    condition: Condition,
    gcfg: GenerateConfig,
    proto: Protocol,
    allow_other_model: bool,
    checks: bool,
) -> tuple[list[str], list[Any]]:
    """The question texts and their rendered prompts, every check made."""
    texts = [getattr(q, "text", q) for q in questions]
    sources = [getattr(q, "source", f"question {i + 1}") for i, q in enumerate(questions)]
    if condition.personalities and len(condition.personalities) != len(texts):
        raise UserError(
            f"condition {condition.label}: {len(condition.personalities)} persona texts for {len(texts)} questions"
        )
    for ns in (s for pair in condition.pairs for s in pair if s is not None):
        check_fits(model, ns, allow_other_model=allow_other_model)
    fields = [{"personality": p} for p in condition.personalities] or [{}] * len(texts)
    prompts = [
        proto.prompt(model.tokenizer, condition.stage, question=q, **f)
        for q, f in zip(texts, fields, strict=True)
    ]
    if checks:
        ids = [p.token_ids for p in prompts]
        check_context(model, ids, gcfg.max_new_tokens, sources)
        warn_unknown(model.tokenizer, ids, sources)
    return texts, prompts


def _rows(
    model: Model,
    texts: list[str],
    prompts: list[Any],
    gens: list[Any],
    condition: Condition,
    proto: Protocol,
    token_ids: bool = False,
) -> list[dict[str, Any]]:
    rows = []
    for i, (q, p, g) in enumerate(zip(texts, prompts, gens, strict=True)):
        row: dict[str, Any] = {"question": q, "prompt": p.text, "answer": g.text}
        if condition.kind in ("search", "p2", "p2-as-written"):
            row["persona"] = condition.personalities[i]
        if token_ids:
            row["prompt_token_ids"] = p.token_ids
        row["answer_token_ids"] = g.answer_ids  # exact; the prompt's ids are tokenize(prompt)
        row.update(
            trait=condition.trait,
            pole=condition.pole,
            condition=condition.label,
            gamma=condition.gamma,
            **condition.extra,
            n_answer_tokens=len(g.answer_ids),
            hit_eos=g.hit_eos,
            model=model_id(model),
            **proto.record(),
        )
        if is_engine(model):
            row["engine"] = engine_name(model)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class AnswerJob:
    """One answer set: `questions` answered under `condition` with `gcfg`, kept as `<key>.jsonl`."""

    key: str
    questions: Sequence[Any]
    condition: Condition
    gcfg: GenerateConfig


def answer_sets(
    model: Model,
    jobs: Sequence[AnswerJob],
    folder: str | Path,
    *,
    protocol: Protocol | str | None = None,
    tl_model: TransformerBridge | None = None,
    progress: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """The rows of every job: read back from `folder/<key>.jsonl` where an earlier (killed) run wrote
    them, the rest generated and each written as soon as it exists.

    On an engine every missing set is one batch of mixed conditions (per-request inductions: the
    engine's speed at large batches); a vector condition runs on `tl_model` (the TL loop, same
    weights). On the TL loop the sets run one by one (an intervention's hooks hold the whole model).
    """
    if len({j.key for j in jobs}) != len(jobs):
        raise ValueError("answer_sets: two jobs share a key")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = protocol_for(model, protocol)
    got: dict[str, list[dict[str, Any]]] = {}
    batched: list[AnswerJob] = []
    for job in jobs:
        path = folder / f"{job.key}.jsonl"
        if path.is_file():
            got[job.key] = [{k: v for k, v in r.items() if k != "_line"} for r in read_answers(path)]
        elif is_engine(model) and job.condition.direction is None:
            batched.append(job)
    in_batch = {j.key for j in batched}
    for job in (j for j in jobs if j.key not in got and j.key not in in_batch):
        on = model
        if job.condition.direction is not None and is_engine(model):
            if tl_model is None:
                raise UserError(f"--engine {engine_name(model)}: the vector baseline runs on --engine tl")
            on = tl_model
        got[job.key] = answer(on, job.questions, job.condition, job.gcfg, protocol=proto, progress=progress)
        write_answers(folder / f"{job.key}.jsonl", got[job.key])
    groups: dict[tuple, list[AnswerJob]] = {}
    for job in batched:  # one engine call per sampling configuration
        groups.setdefault(tuple(sorted(asdict(job.gcfg).items())), []).append(job)
    for group in groups.values():
        prepared = [_prepare(model, j.questions, j.condition, j.gcfg, proto, False, True) for j in group]
        ids, extras, index = [], [], []
        for job, (_, prompts) in zip(group, prepared, strict=True):
            cond = job.condition
            extra = (
                model.induce_extra(cond.pairs, cond.induce_cfg or proto.induce_config())
                if cond.pairs
                else None
            )
            ids += [p.token_ids for p in prompts]
            extras += [extra] * len(prompts)
            index += list(range(len(prompts)))  # seeds as in a call of this set alone
        gens = model.generate(ids, group[0].gcfg, extra=extras, indices=index, progress=progress)
        start = 0
        for job, (texts, prompts) in zip(group, prepared, strict=True):
            part = gens[start : start + len(prompts)]
            start += len(prompts)
            got[job.key] = _rows(model, texts, prompts, part, job.condition, proto)
            write_answers(folder / f"{job.key}.jsonl", got[job.key])
    return {job.key: got[job.key] for job in jobs}


def _generate(
    model: Any,
    ids: list[list[int]],
    gcfg: GenerateConfig,
    condition: Condition,
    proto: Protocol,
    allow_other_model: bool,
    progress: bool,
) -> list[Any]:
    """The engine seam: the TransformerLens loop under the condition's hooks, or another engine
    (vLLM) told per request what to induce."""
    if not is_engine(model):
        with intervention(model, condition, proto, allow_other_model=allow_other_model):
            return generate(model, ids, gcfg, progress=progress)
    if condition.direction is not None:
        raise UserError(f"--engine {engine_name(model)}: the vector baseline runs on --engine tl")
    extra = None
    if condition.pairs:
        extra = model.induce_extra(condition.pairs, condition.induce_cfg or proto.induce_config())
    return model.generate(ids, gcfg, extra=extra, progress=progress)


def write_answers(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """The answers file: JSON lines, written atomically."""
    write_jsonl_atomic(path, rows)
    return Path(path)


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """An answers file (JSON lines, each with an `answer` text), each row with its `_line`."""
    rows = read_jsonl(path, what="answers (JSON lines with question and answer)")
    for r in rows:
        if not isinstance(r.get("answer"), str):
            raise UserError(f'{path}:{r["_line"]}: no "answer" text to score')
    return rows
