"""npti_lens: neuron-based personality trait induction (NPTI) on TransformerLens 4.

The names below load their module on first use, so `import npti_lens` (and `npti --help`) stays
light: torch and TransformerLens load when a model-facing name is first touched.
"""

from __future__ import annotations

import importlib
from typing import Any

from npti_lens.core.constants import VERSION

__version__ = VERSION

_WHERE = {
    "Condition": "workflows.answers",
    "answer": "workflows.answers",
    "GenerateConfig": "model.generation",
    "Generation": "model.generation",
    "generate": "model.generation",
    "positions_context": "model.generation",
    "InduceConfig": "method.induction",
    "InductionHandle": "method.induction",
    "check_fits": "method.induction",
    "induce": "method.induction",
    "ModelConfig": "model.load",
    "ModelFacts": "model.load",
    "facts": "model.load",
    "load_model": "model.load",
    "NeuronSet": "method.neurons",
    "import_reference": "method.neurons",
    "load_neuron_sets": "method.neurons",
    "Protocol": "method.protocol",
    "load_protocol": "method.protocol",
    "Stats": "method.stats",
    "record_batch": "method.recording",
    "recording": "method.recording",
    "SelectConfig": "method.selection",
    "select_neurons": "method.selection",
    "select_run": "method.selection",
    "Readout": "method.readout",
    "Trace": "method.readout",
    "monitor": "method.readout",
    "monitor_rows": "workflows.monitoring",
    "MLPSites": "model.sites",
    "mlp_sites": "model.sites",
    "run_search": "workflows.search",
    "merge_runs": "workflows.merge",
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
