"""The recording half of NPTI's vLLM worker extension: answer-token statistics kept in the workers.

Each bucket's counts live on the worker's device between checkpoints (int32 histograms: half the
memory of the run's int64, and the driver takes them before 2**30 tokens), and cross to the driver
only when it takes them (`npti_take`), as one safetensors file per rank in a folder all ranks see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

COUNT_LIMIT = 1 << 30  # tokens a worker counts before the driver must take them (int32 counts)


@dataclass
class Site:
    layer: int
    gated: bool
    d_local: int  # neurons on this rank
    gate: Any = None  # the activation of the gate half (gated MLPs)


class Recording:
    """Mixed into `npti_lens.vllm.worker.NPTIWorkerExtension`: its `_npti` state holds the buckets."""

    _npti: dict[str, Any]

    def npti_take(self, bucket: str, folder: str) -> str | None:
        """Write the statistics of `bucket` on this rank's neurons into `folder` (safetensors: vLLM's
        RPC carries no typed tensors; a folder all ranks see, for workers on other nodes) and forget
        them; returns the file, or None if none were counted. The driver calls it at checkpoints."""
        from safetensors.torch import save_file

        taken = self._npti["stats"].pop(bucket, None)
        self._npti["counted"].pop(bucket, None)
        self._npti["recorded_upto"] = {k: v for k, v in self._npti["recorded_upto"].items() if k[0] != bucket}
        if taken is None:
            return None
        tensors = {"n_tokens": torch.tensor([taken["n_tokens"]])}
        tensors.update({k: v for k, v in taken.items() if k != "n_tokens" and v is not None})
        path = Path(folder) / f"{bucket}.rank{self._npti['rank']}.safetensors"
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))
        return str(path)

    def npti_counted(self, bucket: str) -> int:
        """Tokens counted into `bucket` since it was last taken."""
        return int(self._npti["counted"].get(bucket, 0))

    def _npti_record(self, bucket: str, site: Site, rows: Tensor, x: Tensor, out: Tensor) -> None:
        from npti_lens.core.constants import N_BINS
        from npti_lens.method.stats import add_counts

        s = self._npti
        stats = s["stats"].get(bucket)
        if stats is None:
            n, d, device = s["n_layers"], site.d_local, x.device
            # int32 counts (half the memory of the run's int64; the driver takes them before 2**31)
            stats = s["stats"][bucket] = {
                "n_tokens": 0,
                "n_active": torch.zeros((n, d), dtype=torch.int32, device=device),
                "hist": torch.zeros((n, d, N_BINS), dtype=torch.int32, device=device),
                "sum": torch.zeros((n, d), dtype=torch.float64, device=device),
                "sum_sq": torch.zeros((n, d), dtype=torch.float64, device=device),
                "up_sum": torch.zeros((n, d), dtype=torch.float64, device=device),
                "resid_sum": None,
            }
        if site.gated:
            gate_up = x.index_select(0, rows)
            a = site.gate(gate_up[:, : site.d_local])
            stats["up_sum"][site.layer] += gate_up[:, site.d_local :].sum(0, dtype=torch.float64)
        else:
            a = out.index_select(0, rows)
        if site.layer == 0:
            stats["n_tokens"] += int(rows.numel())
            s["counted"][bucket] = stats["n_tokens"]
        layer = site.layer
        add_counts(
            stats["hist"][layer], stats["n_active"][layer], stats["sum"][layer], stats["sum_sq"][layer], a
        )

    def _npti_block_hook(self, layer: int):  # noqa: ANN202 - a closure over the layer
        def hook(module: torch.nn.Module, inputs: tuple, out: Any) -> None:
            step = self._npti["step"]
            if step is None or not step.records:
                return
            h = (
                out[0] + out[1]
                if isinstance(out, tuple) and out[1] is not None
                else (out[0] if isinstance(out, tuple) else out)
            )
            for bucket, rows in step.records:
                stats = self._npti["stats"][bucket]
                if stats["resid_sum"] is None:
                    stats["resid_sum"] = torch.zeros(
                        (self._npti["n_layers"], h.shape[-1]), dtype=torch.float64, device=h.device
                    )
                stats["resid_sum"][layer] += h.index_select(0, rows).sum(0, dtype=torch.float64)

        return hook
