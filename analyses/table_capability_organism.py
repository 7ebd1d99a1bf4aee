"""Table and figure: the organism's trait score next to its capability cost, per gamma.

Trait score: target-pole fraction of greedy answers to the held-out questions (20 per trait).
Cost: change in perplexity of the corpus's own neutral answers (200 no-persona examples per trait,
not used in training: seed 1) under the induction. Mean over the 10 trait poles.
"""

from __future__ import annotations

from dataclasses import replace

from _sources import OUT, ROOT

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.evaluation.capability import retention
from npti_lens.evaluation.figures import retention_vs_trait
from npti_lens.judges.organism import attribute
from npti_lens.method.induction import load_pair
from npti_lens.method.protocol import ORGANISM, load_protocol
from npti_lens.model.generation import GenerateConfig
from npti_lens.model.load import load_model
from npti_lens.organism import corpus
from npti_lens.workflows.answers import Condition, answer

GAMMAS = [1.0, 3.0, 5.0]


def main() -> None:
    model = load_model("organism")
    gcfg = GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0)
    rules = load_protocol(ORGANISM).induce_config()  # the keep rule and clamp the demo uses
    split = corpus.question_split()
    neutral = [e for e in corpus.examples(3000, seed=1) if e.persona is None]
    rows = []
    for trait in TRAITS:
        texts = [(e.question, e.answer) for e in neutral if e.trait == trait][:200]
        questions = split[trait]["test"]
        for pole in POLES:
            target, opp = load_pair(ROOT / "neuron_results" / "organism", trait, pole)
            ppl = {r["gamma"]: r for r in retention(model, target, opp, texts, GAMMAS, rules=rules).rows}
            for g in [None, *GAMMAS]:
                cond = (
                    Condition.none()
                    if g is None
                    else Condition.npti([(target, opp)], replace(rules, gamma=g))
                )
                answers = answer(model, questions, cond, gcfg)
                score = sum(attribute(a["answer"], trait, pole)["target_fraction"] for a in answers) / len(
                    answers
                )
                rows.append(
                    {
                        "trait": trait,
                        "pole": pole,
                        "gamma": g,
                        "trait_score": score,
                        "perplexity": ppl[g]["perplexity"],
                        "delta_nll": ppl[g]["delta_nll_per_token"],
                    }
                )
    print("| gamma | target-pole fraction | perplexity of neutral answers | change in NLL per token |")
    print("| --- | --- | --- | --- |")
    means = []
    for g in [None, *GAMMAS]:
        rs = [r for r in rows if r["gamma"] == g]
        m = {k: sum(r[k] for r in rs) / len(rs) for k in ("trait_score", "perplexity", "delta_nll")}
        means.append({"gamma": g, **m})
        print(
            f"| {'none' if g is None else f'{g:g}'} | {m['trait_score']:.3f} | {m['perplexity']:.3f} | "
            f"{m['delta_nll']:+.3f} |"
        )
    fig = retention_vs_trait(means, OUT / "organism" / "capability_vs_trait.png")
    print(f"figure: {fig} (+ .pdf)")


if __name__ == "__main__":
    main()
