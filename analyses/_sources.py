"""Where the analyses read neuron sets: the organism's (shipped) and the published Llama-3 ones."""

from __future__ import annotations

from pathlib import Path

from npti_lens.method.neurons import NeuronSet, import_reference, load_neuron_sets

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "analyses" / "out"
PUBLISHED = ROOT.parent / "shared" / "reference" / "npti-original" / "neuron_results_llama3_8b_instruct"


def sources() -> dict[str, dict[str, NeuronSet]]:
    """`organism` always; `llama3-8b-instruct` when ../shared holds the published sets."""
    out = {"organism": load_neuron_sets(ROOT / "neuron_results" / "organism")}
    if PUBLISHED.is_dir():
        out["llama3-8b-instruct"] = import_reference(PUBLISHED)
    return out
