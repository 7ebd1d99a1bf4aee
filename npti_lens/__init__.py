"""npti_lens: neuron-based personality trait induction (NPTI) on TransformerLens 4.

The names below load their module on first use, so `import npti_lens` (and `npti --help`) stays
light: torch and TransformerLens load when a model-facing name is first touched.
"""

from __future__ import annotations

import importlib
from typing import Any

from npti_lens.constants import VERSION

__version__ = VERSION

_WHERE = {
    "Condition": "answers",
    "answer": "answers",
    "GenerateConfig": "generation",
    "Generation": "generation",
    "generate": "generation",
    "positions_context": "generation",
    "InduceConfig": "induction",
    "InductionHandle": "induction",
    "check_fits": "induction",
    "induce": "induction",
    "ModelConfig": "model",
    "ModelFacts": "model",
    "facts": "model",
    "load_model": "model",
    "NeuronSet": "neurons",
    "import_reference": "neurons",
    "load_neuron_sets": "neurons",
    "Protocol": "protocol",
    "load_protocol": "protocol",
    "Stats": "record",
    "record_batch": "record",
    "recording": "record",
    "SelectConfig": "select",
    "select_neurons": "select",
    "select_run": "select",
    "Readout": "readout",
    "Trace": "readout",
    "monitor": "readout",
    "monitor_rows": "monitoring",
    "MLPSites": "sites",
    "mlp_sites": "sites",
    "run_search": "search",
    "merge_runs": "merge",
    "VLLMEngine": "vllm.engine",
}
__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"npti_lens.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'npti_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
