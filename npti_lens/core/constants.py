"""Names shared by every stage: traits, poles, histogram bins, file names."""

from __future__ import annotations

from pathlib import Path

VERSION = "0.1.0"  # the package's version (npti_lens.__version__), recorded in every artifact

TRAITS: tuple[str, ...] = (
    "Openness",
    "Conscientiousness",
    "Extraversion",
    "Agreeableness",
    "Neuroticism",
)
POLES: tuple[str, ...] = ("high", "low")
# The answers of a 1-5 rating: the inventory's options and the LLM judge's ratings.
RATING_DIGITS: tuple[str, ...] = ("1", "2", "3", "4", "5")

# Histogram of a neuron's activation: 301 bins over the edges -inf, 0.00, 0.01, ..., 2.99, +inf,
# bin k holding edge[k-1] < a <= edge[k]. The inner edges are the decimals k/100 exactly.
N_BINS = 301
EDGES_PER_UNIT = 100  # edges are k / 100: division gives the double nearest the decimal
N_INNER_EDGES = N_BINS - 1  # 0.00 ... 2.99

# File names of the artifacts on disk, in one place.
CFG_FILE = "cfg.json"
NEURONS_FILE = "neurons.safetensors"
NEURONS_CSV = "neurons.csv"
RUN_CFG_FILE = "run.json"
ANSWERS_DIR = "answers"
STATS_DIR = "stats"
# The model organism's weights, shipped inside the package (npti_lens/organism/npti-organism).
ORGANISM_WEIGHTS = Path(__file__).resolve().parents[1] / "organism" / "npti-organism"


def pole_name(trait: str, pole: str) -> str:
    """`Extraversion_high`: the name of a trait pole in file names and tables."""
    return f"{trait}_{pole}"


def reference_key(trait: str, pole: str) -> str:
    """The reference's persona key for a pole: `Extraversion` (high) or `Extraversion_reversed`."""
    return trait if pole == "high" else f"{trait}_reversed"


def opposite(pole: str) -> str:
    return "low" if pole == "high" else "high"
