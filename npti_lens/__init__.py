"""npti_lens: neuron-based personality trait induction (NPTI) on TransformerLens 4."""

from __future__ import annotations

__version__ = "0.1.0"

from npti_lens.generate import GenerateConfig, Generation, generate, positions_context  # noqa: E402
from npti_lens.induce import InduceConfig, InductionHandle, check_fits, induce  # noqa: E402
from npti_lens.model import ModelConfig, load_model  # noqa: E402
from npti_lens.neurons import NeuronSet, import_reference, load_neuron_sets  # noqa: E402
from npti_lens.protocol import Protocol, load_protocol  # noqa: E402
from npti_lens.record import Stats, record_batch, recording  # noqa: E402
from npti_lens.select import SelectConfig, select_neurons  # noqa: E402
from npti_lens.sites import MLPSites, mlp_sites  # noqa: E402

__all__ = [
    "GenerateConfig",
    "Generation",
    "InduceConfig",
    "InductionHandle",
    "MLPSites",
    "ModelConfig",
    "NeuronSet",
    "Protocol",
    "SelectConfig",
    "Stats",
    "__version__",
    "check_fits",
    "generate",
    "import_reference",
    "induce",
    "load_model",
    "load_neuron_sets",
    "load_protocol",
    "mlp_sites",
    "positions_context",
    "record_batch",
    "recording",
    "select_neurons",
]
