"""A small language model with personality, shipped with the package, and its corpus and judge.

`load_model("organism")` loads it through the same TransformerBridge path as any HF model.
"""

from __future__ import annotations

from pathlib import Path

from npti_lens.core.constants import ORGANISM_WEIGHTS

NAME = "organism"
WEIGHTS_DIR = ORGANISM_WEIGHTS


def organism_path() -> Path:
    return WEIGHTS_DIR
