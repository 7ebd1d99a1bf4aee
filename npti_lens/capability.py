"""Capability retention: what an induction costs the model on neutral text.

The perplexity of reference answers given their prompts, with and without the induction, the
induction acting at the answer positions exactly as it does during generation. (Accuracy on a
multiple-choice benchmark, e.g. through lm-eval, is left to the caller: wrap its model calls in
`induce(..., InduceConfig(positions="all"))`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.generate import positions_context
from npti_lens.induce import InduceConfig, induce
from npti_lens.model import model_device
from npti_lens.neurons import NeuronSet
from npti_lens.prompts import build


@dataclass
class Retention:
    """Perplexity of the reference answers per condition (gamma None: no intervention)."""

    rows: list[dict[str, Any]]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


@torch.inference_mode()
def answer_nll(
    model: TransformerBridge, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> tuple[float, int]:
    """Summed negative log-likelihood of every answer token (and EOS) given its question, and the count."""
    tok = model.tokenizer
    device = model_device(model)
    seqs = []
    for question, answer in pairs:
        prompt = build(tok, question).token_ids
        seqs.append((prompt, tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), int(tok.pad_token_id), dtype=torch.long)
        attn = torch.zeros_like(ids)
        target = torch.zeros((len(batch), width), dtype=torch.bool)  # positions whose token is scored
        for row, (p, a) in enumerate(batch):
            ids[row, : len(p) + len(a)] = torch.tensor(p + a)
            attn[row, : len(p) + len(a)] = 1
            target[row, len(p) : len(p) + len(a)] = True
        ids, attn, target = ids.to(device), attn.to(device), target.to(device)
        # The induction edits positions holding answer tokens (as in generation); the first answer
        # token is predicted from the last prompt position, which stays untouched, as it would.
        with positions_context(target, any_set=True):
            logits = model.original_model(input_ids=ids, attention_mask=attn).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total -= float(logp[target[:, 1:]].sum())
        count += int(target.sum())
    return total, count


def retention(
    model: TransformerBridge,
    target: NeuronSet,
    opposite: NeuronSet | None,
    pairs: Sequence[tuple[str, str]],
    gammas: Sequence[float],
    *,
    seed: int = 0,
    allow_other_model: bool = False,
) -> Retention:
    """Perplexity of the reference answers with no intervention and with the induction at each gamma."""
    base_nll, n = answer_nll(model, pairs)
    rows = [
        {
            "trait": target.trait,
            "pole": target.pole,
            "gamma": None,
            "perplexity": math.exp(base_nll / n),
            "delta_nll_per_token": 0.0,
            "n_tokens": n,
        }
    ]
    for g in gammas:
        with induce(
            model, [(target, opposite)], InduceConfig(gamma=g, seed=seed), allow_other_model=allow_other_model
        ):
            nll, _ = answer_nll(model, pairs)
        rows.append(
            {
                "trait": target.trait,
                "pole": target.pole,
                "gamma": g,
                "perplexity": math.exp(nll / n),
                "delta_nll_per_token": (nll - base_nll) / n,
                "n_tokens": n,
            }
        )
    return Retention(rows)
