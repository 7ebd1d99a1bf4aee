"""How close does a constant vector come to NPTI's shift in a gated MLP (the organism)?

For a gated MLP the shifted neuron is multiplied by up(x) before W_out, so NPTI's edit depends on
the input. Replacing up(x) by its mean over the pole's search answers gives a constant vector
(`npti_as_vector(..., up_mean=...)`). Per trait pole, at gamma 3, all neurons kept and no clamp:
- output difference: relative error of the change in next-token log-probabilities at the
  held-out answers' positions, ||d_vector - d_npti|| / ||d_npti||;
- effect: target-pole fraction of greedy answers to the held-out questions under each.

Run: python analyses/bridge_gated_organism.py (about a minute on 2 cores).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch

from npti_lens.core.constants import POLES, TRAITS, pole_name
from npti_lens.judges.organism import attribute
from npti_lens.method.directions import npti_as_vector, steer
from npti_lens.method.induction import InduceConfig, induce
from npti_lens.method.selection import SelectConfig, select_run
from npti_lens.method.stats import load_run_stats
from npti_lens.model.generation import GenerateConfig, positions_context
from npti_lens.model.load import load_model, pad_batch
from npti_lens.organism import corpus
from npti_lens.workflows.answers import Condition, answer
from npti_lens.workflows.search import SearchConfig, run_search

GAMMA = 3.0


def logprobs(
    model: object, ids: torch.Tensor, mask: torch.Tensor, edited: torch.Tensor, ctx: object
) -> torch.Tensor:
    """Next-token log-probabilities with `ctx` active, the edit at the answer positions."""
    with torch.inference_mode(), positions_context(edited, any_set=True), ctx:
        return torch.log_softmax(model.original_model(input_ids=ids, attention_mask=mask).logits, -1)


def main() -> None:
    model = load_model("organism")
    gcfg = GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0)
    work = Path(tempfile.mkdtemp())
    search, _, personas = corpus.write_data(work / "data", 32, 0)
    run_search(model, search, personas, work / "run", SearchConfig(), gcfg, protocol="organism")
    sets = select_run(work / "run", work / "neurons", SelectConfig(min_neurons=20, threshold=0.2))
    split = corpus.question_split()
    print("| trait pole | relative error of the output change | NPTI | vector (mean up) | no intervention |")
    print("| --- | --- | --- | --- | --- |")
    errors = []
    for t in TRAITS:
        qs = split[t]["test"]
        plain = answer(model, qs, Condition.none(), gcfg, protocol="organism", token_ids=True)
        ids, mask = pad_batch(
            model, [r["prompt_token_ids"] + r["answer_token_ids"] for r in plain], left=False
        )
        edited = torch.zeros(ids.shape, dtype=torch.bool)
        for row, r in enumerate(plain):
            n = len(r["prompt_token_ids"])
            edited[row, n : n + len(r["answer_token_ids"])] = True
        for p in POLES:
            stats = load_run_stats(work / "run", t, p)
            target = sets[pole_name(t, p)]
            vec = npti_as_vector(model, target, GAMMA, up_mean=stats.up_sum / stats.n_tokens)
            icfg = InduceConfig(gamma=GAMMA, keep_prob=1.0, deactivate=False)

            base = logprobs(model, ids, mask, edited, contextlib.nullcontext())
            d_npti = (logprobs(model, ids, mask, edited, induce(model, [(target, None)], icfg)) - base)[
                edited
            ]
            d_vec = (logprobs(model, ids, mask, edited, steer(model, vec, 1.0)) - base)[edited]
            err = float((d_vec - d_npti).norm() / d_npti.norm())
            errors.append(err)
            frac = {}
            for name, cond in (
                ("npti", Condition.npti([(target, None)], icfg)),
                ("vector", Condition.vector(vec, 1.0)),
            ):
                rows = answer(model, qs, cond, gcfg, protocol="organism")
                frac[name] = sum(attribute(r["answer"], t, p)["target_fraction"] for r in rows) / len(rows)
            none = sum(attribute(r["answer"], t, p)["target_fraction"] for r in plain) / len(plain)
            print(f"| {t} {p} | {err:.2f} | {frac['npti']:.2f} | {frac['vector']:.2f} | {none:.2f} |")
    print(
        f"relative error: median {sorted(errors)[len(errors) // 2]:.2f}, range {min(errors):.2f}-{max(errors):.2f}"
    )


if __name__ == "__main__":
    main()
