"""Capability retention: what an induction costs the model on neutral text and on a test.

The perplexity of reference answers given their prompts, and the accuracy on multiple-choice
items (each choice scored by its log-likelihood after the question, as lm-eval does: `accuracy`
by the summed log-likelihood, `accuracy_norm` by it per character), with and without the
induction, which acts at the answer (choice) positions exactly as it does during generation.
A full lm-eval harness run can be wrapped the same way: `with induce(model, pairs,
InduceConfig(positions="all")): ...` around its model calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.errors import UserError
from npti_lens.core.files import read_jsonl
from npti_lens.inputs.prompts import build
from npti_lens.method.induction import InduceConfig, induce
from npti_lens.method.neurons import NeuronSet
from npti_lens.model.generation import positions_context
from npti_lens.model.load import model_device, pad_batch


@dataclass
class Retention:
    """Perplexity of the reference answers per condition (gamma None: no intervention)."""

    rows: list[dict[str, Any]]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


def answer_nll(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> tuple[float, int]:
    """Summed negative log-likelihood of every answer token (and EOS) given its question, and the count."""
    per = pair_nlls(model, pairs, batch_size)
    return sum(n for n, _ in per), sum(c for _, c in per)


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer: int  # index of the right choice


def load_texts(path: str) -> list[tuple[str, str]]:
    """(question, reference answer) pairs from JSON lines {"question": ..., "answer": ...}."""
    rows = read_jsonl(path, what='JSON lines like {"question": "...", "answer": "..."}')
    for r in rows:
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise UserError(f'{path}:{r["_line"]}: needs "question" and "answer" text')
    return [(r["question"], r["answer"]) for r in rows]


def load_choice_items(path: str) -> list[ChoiceItem]:
    """JSON lines {"question": ..., "choices": [...], "answer": index of the right choice}."""
    items = []
    for r in read_jsonl(path, what='JSON lines like {"question": "...", "choices": ["..."], "answer": 0}'):
        q, ch, a = r.get("question"), r.get("choices"), r.get("answer")
        ok = (
            isinstance(q, str)
            and isinstance(ch, list)
            and len(ch) >= 2
            and all(isinstance(c, str) for c in ch)
        )
        if not ok or not isinstance(a, int) or not 0 <= a < len(ch):
            raise UserError(
                f'{path}:{r["_line"]}: needs "question" text, "choices" (2 or more strings) and '
                '"answer" (the index of the right choice)'
            )
        items.append(ChoiceItem(q, tuple(ch), a))
    return items


def choice_accuracy(
    model: TransformerBridge, items: Sequence[ChoiceItem], batch_size: int = 16
) -> dict[str, float]:
    """Accuracy (summed log-likelihood) and per-character accuracy (`accuracy_norm`) on the items.

    Under an induction the position that predicts the first choice token is edited too: the
    choice is the model's answer, produced there.
    """
    pairs = [(it.question, " " + c.strip()) for it in items for c in it.choices]
    nll = iter(pair_nlls(model, pairs, batch_size, eos=False, edit_last_prompt=True))
    hits = hits_norm = 0
    for it in items:
        ll = [-next(nll)[0] for _ in it.choices]
        norm = [v / max(1, len(c.strip()) + 1) for v, c in zip(ll, it.choices, strict=True)]
        hits += int(max(range(len(ll)), key=ll.__getitem__) == it.answer)
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == it.answer)
    return {"accuracy": hits / len(items), "accuracy_norm": hits_norm / len(items), "n_items": len(items)}


@torch.inference_mode()
def pair_nlls(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    *,
    eos: bool = True,
    edit_last_prompt: bool = False,
) -> list[tuple[float, int]]:
    """(negative log-likelihood, tokens) of each answer (with EOS when `eos`) given its question.

    An induction acts at the answer positions; with `edit_last_prompt` also at the last prompt
    position, which predicts the first answer token (else a one-token answer could not move).
    """
    tok = model.tokenizer
    seqs = []
    for question, answer in pairs:
        prompt = build(tok, question).token_ids
        seqs.append(
            (prompt, tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else []))
        )
    return sequence_nlls(model, seqs, batch_size, edit_last_prompt=edit_last_prompt)


@torch.inference_mode()
def sequence_nlls(
    model: TransformerBridge,
    seqs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 16,
    *,
    edit_last_prompt: bool = False,
) -> list[tuple[float, int]]:
    """(negative log-likelihood, tokens) of each answer's token ids given its prompt's token ids."""
    device = model_device(model)
    out: list[tuple[float, int]] = []
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        ids, attn = pad_batch(model, [p + a for p, a in batch], left=False)
        target = torch.zeros(ids.shape, dtype=torch.bool)  # positions whose token is scored
        edited = torch.zeros(ids.shape, dtype=torch.bool)
        for row, (p, a) in enumerate(batch):
            target[row, len(p) : len(p) + len(a)] = True
            edited[row, len(p) - int(edit_last_prompt) : len(p) + len(a)] = True
        target, edited = target.to(device), edited.to(device)
        # The induction edits positions holding answer tokens (as in generation); by default the
        # first answer token is predicted from the last prompt position, untouched, as it would be.
        with positions_context(edited, any_set=True):
            logits = model.original_model(input_ids=ids, attention_mask=attn).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logp = torch.where(target[:, 1:], logp, torch.zeros_like(logp))
        for row in range(len(batch)):
            out.append((-float(logp[row].sum()), int(target[row].sum())))
    return out


def retention(
    model: TransformerBridge,
    target: NeuronSet,
    opposite: NeuronSet | None,
    pairs: Sequence[tuple[str, str]],
    gammas: Sequence[float],
    *,
    seed: int = 0,
    allow_other_model: bool = False,
    choices: Sequence[ChoiceItem] = (),
    rules: InduceConfig | None = None,
    intervention_at: Callable[[float], Any] | None = None,
) -> Retention:
    """Perplexity of the reference answers (and accuracy on `choices`, if any) with no intervention
    and with the induction at each gamma; `rules` gives the keep rule and clamp (a protocol's).

    `intervention_at(strength)`, if given, returns the context manager to measure under instead of
    the NPTI induction (e.g. the direction baseline's `steer` at that coefficient)."""
    base_nll = None

    def row(gamma: float | None) -> dict[str, Any]:
        nonlocal base_nll
        r: dict[str, Any] = {"trait": target.trait, "pole": target.pole, "gamma": gamma}
        if pairs:
            nll, n = answer_nll(model, pairs)
            base_nll = nll if base_nll is None else base_nll
            r.update(perplexity=math.exp(nll / n), delta_nll_per_token=(nll - base_nll) / n, n_tokens=n)
        if choices:
            r.update(choice_accuracy(model, choices))
        return r

    rows = [row(None)]

    def npti_at(g: float) -> Any:
        cfg = dataclasses.replace(rules or InduceConfig(), gamma=g, seed=seed)
        return induce(model, [(target, opposite)], cfg, allow_other_model=allow_other_model)

    for g in gammas:
        with (intervention_at or npti_at)(g):
            rows.append(row(g))
    if choices:
        for r in rows:
            r["delta_accuracy"] = r["accuracy"] - rows[0]["accuracy"]
    return Retention(rows)
