"""The direction baseline as a llama.cpp control vector (`--control-vector FILE.gguf`), and back.

What llama.cpp reads (checked against its source: `common/common.cpp`,
`common_control_vector_load_one`, and `src/llama-adapter.cpp`, `llama_adapter_cvec::apply`):
only tensors named `direction.N` with N >= 1, F32, one-dimensional, all of the model's width. The
loader stores `direction.N` at offset `n_embd * (N - 1)` and the applier fills block `il` from
offset `n_embd * (il - 1)`, so the two offsets cancel: `direction.N` is added to the output of
block N counted from 0 (after the MLP's residual add), at every position, the prompt included.
That is `resid_site(N)`, where `npti_lens.method.directions.steer` adds `vectors[N]`; `direction.0` is
rejected by the loader, so block 0 cannot be steered. llama.cpp reads no metadata key; we write the
three its own `cvector-generator` and repeng write (`general.architecture = controlvector`,
`controlvector.model_hint`, `controlvector.layer_count`) and ours under `npti.*` (trait, pole,
model, scale). `Direction.to_gguf` and `Direction.from_gguf` (`npti_lens.method.directions`) are the
front of this codec, which knows tensors and keys, not directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npti_lens.core.errors import UserError
from npti_lens.core.files import atomic_path

ARCH = "controlvector"
KEYS = ("trait", "pole", "model")  # ours, as npti.<key>


def export_layers(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    """The blocks an export holds: `layers`, or every block but 0 (llama.cpp cannot steer block 0)."""
    chosen = list(range(1, n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    if 0 in chosen:
        raise UserError(
            "--layers: llama.cpp cannot steer block 0 (its loader rejects direction.0); leave 0 out"
        )
    if not chosen or chosen[0] < 1 or chosen[-1] >= n_layers:
        raise UserError(
            f"--layers: {chosen} are not among 1..{n_layers - 1} (the direction has {n_layers} layers)"
        )
    return chosen


def write(
    path: str | Path,
    vectors: torch.Tensor,
    meta: dict[str, str],
    *,
    scale: float = 1.0,
    layers: Sequence[int] | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write `scale * vectors[N]` as `direction.N` for each chosen block N (default: all but block 0),
    with `meta` (trait, pole, model) as `npti.*` keys; atomically."""
    import gguf

    if not np.isfinite(scale) or scale == 0:
        raise UserError(f"--scale: {scale} is not a finite, non-zero number")
    chosen = export_layers(int(vectors.shape[0]), layers)
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint or meta["model"])
        w.add_int32(f"{ARCH}.layer_count", len(chosen))
        for key in KEYS:
            w.add_string(f"npti.{key}", meta[key])
        w.add_float32("npti.scale", float(scale))
        vec = vectors.detach().double().cpu() * float(scale)
        for n in chosen:
            w.add_tensor(f"direction.{n}", vec[n].numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _string(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def read(path: str | Path, *, n_layers: int, d_model: int) -> tuple[torch.Tensor, list[int], dict[str, str]]:
    """A llama.cpp control vector as llama.cpp applies it: the `n_layers x d_model` vectors (blocks
    the file does not hold, block 0 among them, zero), the blocks it holds, and our `npti.*` keys
    (absent from others' files). A file that is not one, or is of another width or depth, is one line
    naming it."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf-py raises several types for a bad file
        raise UserError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:80]})") from None
    vectors = torch.zeros((n_layers, d_model), dtype=torch.float64)
    held = set()
    for t in reader.tensors:
        head, _, index = t.name.partition(".")
        if head != "direction":
            continue
        if not index.isdigit() or int(index) < 1:
            raise UserError(f"{path}: tensor {t.name} is not direction.N with N >= 1 (llama.cpp rejects it)")
        n = int(index)
        data = np.asarray(t.data)
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or data.ndim != 1 or data.shape[0] != d_model:
            raise UserError(
                f"{path}: {t.name} is not a one-dimensional F32 vector of the model's width {d_model}"
            )
        if n >= n_layers:
            raise UserError(f"{path}: {t.name} names block {n}, but the model has {n_layers} blocks")
        vectors[n] += torch.from_numpy(data.astype(np.float64))  # llama.cpp adds repeated names
        held.add(n)
    if not held:
        raise UserError(f"{path}: no direction.N tensors: not a llama.cpp control vector")
    meta = {k: v for k in KEYS if (v := _string(reader, f"npti.{k}")) is not None}
    return vectors.float(), sorted(held), meta
