"""Table: ablations of the induction on the organism, mean over its 10 trait poles.

Held-out questions (20 per trait), greedy answers of at most 48 tokens, the shipped neuron sets
(neuron_results/organism), gamma 3 unless swept; scored by the organism judge.
"""

from __future__ import annotations

from _sources import OUT, ROOT

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.core.files import to_csv
from npti_lens.judges.organism import OrganismJudge
from npti_lens.judges.registry import score_rows, summarize
from npti_lens.method.induction import load_pair
from npti_lens.model.generation import GenerateConfig
from npti_lens.model.load import load_model
from npti_lens.organism.corpus import question_split
from npti_lens.workflows.ablation import AblationConfig, run_ablation


def main() -> None:
    model = load_model("organism")
    cfg = AblationConfig(gamma=3.0, gammas="1,3,5", top_k="5,20,50")
    gcfg = GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0)
    split = question_split()
    scored = []
    for trait in TRAITS:
        for pole in POLES:
            target, opp = load_pair(ROOT / "neuron_results" / "organism", trait, pole)
            rows = run_ablation(model, target, opp, split[trait]["test"], cfg, gcfg)
            scored += score_rows(rows, OrganismJudge())
    per_pole = summarize(scored)
    overall = summarize(scored, keys=("condition", "gamma", "k", "layers"))
    (OUT / "organism").mkdir(parents=True, exist_ok=True)
    (OUT / "organism" / "ablation_per_pole.csv").write_text(to_csv(per_pole))
    (OUT / "organism" / "ablation.csv").write_text(to_csv(overall))
    print("| condition | gamma | k | layers | target-pole fraction | fluency |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in overall:
        cells = [
            "" if r[c] is None else f"{r[c]:g}" if isinstance(r[c], float) else str(r[c])
            for c in ("condition", "gamma", "k", "layers")
        ]
        print(
            f"| {' | '.join(cells)} | {r['trait_score_mean']:.3f} +- {r['trait_score_sem']:.3f} | "
            f"{r['fluency_mean']:.3f} |"
        )


if __name__ == "__main__":
    main()
