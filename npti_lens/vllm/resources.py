"""What the vLLM engine asks of the machine, decided before vLLM starts: the head sizes a CPU's
attention takes, the cores its workers bind to, and the device memory NPTI's statistics need."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from npti_lens.core.constants import N_BINS
from npti_lens.core.errors import UserError


def check_cpu_head_dim(hf_config: Any) -> None:
    """Refuse, before vLLM starts, a model whose head size vLLM's CPU attention does not take."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    heads = getattr(hf_config, "num_attention_heads", None) or getattr(hf_config, "n_head", 1)
    hidden = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "n_embd", 0)
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise UserError(
            f"--engine vllm: vLLM's CPU attention takes head sizes {', '.join(map(str, sizes))}, and this "
            f"model's is {head_dim}; use --engine tl (or a GPU)"
        )


def stats_bytes(hf_config: Any, tensor_parallel: int = 1) -> int:
    """Device memory one rank's statistics take while a search records (one bucket: int32 counts,
    float64 sums, and the binning temporaries of one chunk), which vLLM's KV-cache sizing cannot see."""
    from npti_lens.method.stats import CHUNK_ELEMENTS

    layers = int(getattr(hf_config, "num_hidden_layers", 0) or getattr(hf_config, "n_layer", 0))
    d_mlp = int(getattr(hf_config, "intermediate_size", 0) or getattr(hf_config, "n_inner", 0) or 0)
    hidden = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "n_embd", 0))
    d_mlp = (d_mlp or 4 * hidden) // tensor_parallel
    counts = layers * d_mlp * (N_BINS + 1) * 4  # hist + n_active, int32
    sums = layers * (3 * d_mlp + hidden) * 8  # sum, sum_sq, up_sum, resid_sum
    return counts + sums + CHUNK_ELEMENTS * (8 + 8 + 4)  # bin indices, their offsets, the float chunk


def cpu_binding(tensor_parallel: int) -> str | None:
    """vLLM's CPU thread binding: one core per rank under tensor parallelism; with one rank every
    core (vLLM's default keeps one core for its front end, which on a small machine costs: SmolLM2
    on 2 cores decodes 57 instead of 38 tokens/s at batch 16)."""
    if tensor_parallel > 1:
        return "|".join(str(i) for i in range(tensor_parallel))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        return None
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    return f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores))


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """`name=value` while the block runs, unless the user set `name` (theirs wins); then restored."""
    if value is None or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
