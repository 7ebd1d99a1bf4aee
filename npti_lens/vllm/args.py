"""What crosses to NPTI's vLLM workers, with no vLLM import: the `npti_*` entries of a request's
`SamplingParams.extra_args` (parsed and checked by the workers, `npti_lens.vllm.worker`, and by the
server's request check, `npti_lens.vllm.check`, whose ValueErrors become HTTP 400s), neuron sets as
plain lists, and a layer's plan split over tensor-parallel ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.method.induction import (
    CLAMP_LAYERS,
    CLAMP_ORDERS,
    KEEP_RULES,
    POSITIONS,
    SEED_MAX,
    InduceConfig,
    LayerPlan,
)
from npti_lens.method.neurons import NeuronSet

PREFIX = "npti_"
# extra_args key -> (InduceConfig field, type)
INDUCE_ARGS = {
    "npti_gamma": ("gamma", float),
    "npti_keep_prob": ("keep_prob", float),
    "npti_keep": ("keep", str),
    "npti_clamp_order": ("clamp_order", str),
    "npti_clamp_layers": ("clamp_layers", str),
    "npti_positions": ("positions", str),
    "npti_seed": ("seed", int),
    "npti_activate": ("activate", bool),  # false: only the opposite pole's clamp (ablations)
    "npti_deactivate": ("deactivate", bool),  # false: only the shift
}
CHOICES = {
    "keep": KEEP_RULES,
    "clamp_order": CLAMP_ORDERS,
    "clamp_layers": CLAMP_LAYERS,
    "positions": POSITIONS,
}
OTHER_ARGS = {"npti_induction", "npti_trait", "npti_pole", "npti_neurons", "npti_record", "npti_record_from"}
GAMMA_LIMIT = 1e4  # a gamma beyond this only makes NaNs
NAME_ARGS = ("npti_induction", "npti_neurons", "npti_record")


def induction_args(extra: dict[str, Any] | None) -> dict[str, Any]:
    """The npti_* entries of a request's extra_args, checked: a ValueError names the bad one."""
    args = {k: v for k, v in (extra or {}).items() if k.startswith(PREFIX)}
    unknown = set(args) - set(INDUCE_ARGS) - OTHER_ARGS
    if unknown:
        known = ", ".join(sorted({*INDUCE_ARGS, *OTHER_ARGS}))
        raise ValueError(f"unknown npti argument {sorted(unknown)[0]!r}; the known ones: {known}")
    if "npti_trait" in args or "npti_pole" in args:
        trait, pole = args.get("npti_trait"), args.get("npti_pole")
        if trait not in TRAITS:
            raise ValueError(f"npti_trait {trait!r} is not one of {', '.join(TRAITS)}")
        if pole not in POLES:
            raise ValueError(f"npti_pole {pole!r} is not one of {', '.join(POLES)}")
    for key, (name, kind) in INDUCE_ARGS.items():
        if key not in args:
            continue
        value = args[key]
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key} must be a number, not {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{key} must be an integer, not {value!r}")
        if kind is bool and value not in (True, False):  # JSON true / false, or 1 / 0
            raise ValueError(f"{key} must be true or false, not {value!r}")
        if kind is str and value not in CHOICES[name]:
            raise ValueError(f"{key} {value!r} is not one of {', '.join(CHOICES[name])}")
    for key in NAME_ARGS:
        value = args.get(key, "x")
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ValueError(f"{key} must be a name (a string of 1 to 256 characters), not {value!r}")
    start = args.get("npti_record_from", 0)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 1 << 31:
        raise ValueError(f"npti_record_from must be a token position (0 or more), not {start!r}")
    seed = args.get("npti_seed", 0)
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"npti_seed {seed!r} is not between 0 and {SEED_MAX}")
    gamma = args.get("npti_gamma", 1.0)
    if not (math.isfinite(gamma) and abs(gamma) <= GAMMA_LIMIT):
        raise ValueError(f"npti_gamma {gamma!r} is not a finite number of at most {GAMMA_LIMIT:g} in size")
    if not 0.0 <= args.get("npti_keep_prob", 0.5) <= 1.0:
        raise ValueError(f"npti_keep_prob {args['npti_keep_prob']!r} is not between 0 and 1")
    return args


def induction_key(args: dict[str, Any], default_neurons: str | None) -> str | None:
    """The registered induction a request asks for, or None for the plain model."""
    if "npti_induction" in args:
        return str(args["npti_induction"])
    if "npti_trait" in args:
        return f"{args.get('npti_neurons', default_neurons)}/{args['npti_trait']}/{args['npti_pole']}"
    return None


def induce_config(args: dict[str, Any], base: InduceConfig) -> InduceConfig:
    kw = {name: kind(args[key]) for key, (name, kind) in INDUCE_ARGS.items() if key in args}  # JSON 3 -> 3.0
    return InduceConfig(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **kw})


@dataclass
class RankPlan:
    """A layer's whole plan (keep draws are made over all its neurons, so every rank agrees) and
    the part on this rank: `mine` indexes it in the whole plan (None: all of it, one rank), `cols`
    are its columns in the rank's activations. Index tensors, built once: a boolean mask applied in
    a forward would make the host wait for the device (a nonzero) in every layer at every step."""

    full: LayerPlan
    mine: Tensor | None
    part: LayerPlan
    cols: Tensor
    up_cols: Tensor  # the same neurons' columns in the up half of gate|up (gated MLPs)


def rank_plan(plan: LayerPlan, rank: int, d_local: int, device: torch.device) -> RankPlan:
    lo, hi = rank * d_local, (rank + 1) * d_local
    mine = ((plan.idx >= lo) & (plan.idx < hi)).nonzero().squeeze(-1)  # on the host, once

    def take(sel: Tensor | slice) -> LayerPlan:
        return LayerPlan(
            idx=plan.idx[sel].to(device),
            delta=plan.delta[sel].to(device),
            is_target=plan.is_target[sel].to(device),
            clamp=plan.clamp[sel].to(device),
            n_target=plan.n_target,
            n_keep=plan.n_keep,
        )

    whole = mine.numel() == plan.idx.numel()
    return RankPlan(
        full=take(slice(None)),
        mine=None if whole else mine.to(device),
        part=take(mine),
        cols=(plan.idx[mine] - lo).to(device),
        up_cols=(plan.idx[mine] - lo + d_local).to(device),
    )


OP = "npti::act"  # the op that carries the edit through compilation (npti_lens.vllm.ops)
# vLLM 0.32's default piecewise split points (CompilationConfig._attention_ops and the KV-cache
# updates set_splitting_ops_for_v1 adds), which an explicit list replaces, then ours.
SPLIT_DEFAULTS = (
    "vllm::unified_attention_with_output", "vllm::unified_mla_attention_with_output", "vllm::mamba_mixer2",
    "vllm::mamba_mixer", "vllm::short_conv", "vllm::qwen4_exp_ple_short_conv", "vllm::qwen4_exp_qsa_with_output",
    "vllm::qwen4_exp_qsa_prepare_with_output", "vllm::linear_attention", "vllm::qwen_gdn_attention_core",
    "vllm::qwen_gdn_attention_core_fused_norm_packed", "vllm::gdn_attention_core_xpu",
    "vllm::olmo_hybrid_gdn_full_forward", "vllm::sparse_attn_indexer", "vllm::rocm_aiter_sparse_attn_indexer",
    "vllm::deepseek_v4_attention", "vllm::hpc_rope_norm_forward", "vllm::unified_kv_cache_update",
    "vllm::unified_mla_kv_cache_update",
)  # fmt: skip


def compile_settings() -> dict[str, Any]:
    """vLLM engine arguments for compiled NPTI: vLLM's compilation (mode 3, VLLM_COMPILE) with
    piecewise CUDA graphs split at NPTI's op as at attention, so the edit runs between graphs."""
    return {
        "enforce_eager": False,
        "compilation_config": {
            "mode": 3,
            "cudagraph_mode": "PIECEWISE",
            "splitting_ops": [*SPLIT_DEFAULTS, OP],
        },
    }


def _field(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def compile_refusal(config: Any) -> str | None:
    """Why a compilation config would run NPTI's op inside a CUDA graph (the edit replayed, not
    run), or None."""
    if config is None:
        return None
    mode = str(_field(config, "cudagraph_mode") or "").upper().rsplit(".", 1)[-1]
    if mode in ("FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"):
        return (
            f"compilation_config.cudagraph_mode={mode}: a full CUDA graph replays the whole model without "
            "running the edit's Python (it would silently not happen); npti --compile uses PIECEWISE"
        )
    splits = _field(config, "splitting_ops")
    if mode == "PIECEWISE" and splits is not None and OP not in splits:
        return (
            f"compilation_config.splitting_ops without {OP}: piecewise CUDA graphs would capture the "
            f"edit instead of running it; add {OP} (npti --compile does)"
        )
    return None


# What the hooks cannot work under: (setting, value that is refused or a test, why). Read from a
# plain mapping of vLLM's engine arguments (`npti serve`'s parsed flags, `VLLMEngine`'s keywords)
# before any model is loaded, and again from the workers' VllmConfig (npti_lens.vllm.worker).
WEIGHT_ONLY_QUANT = ("awq", "awq_marlin", "gptq", "gptq_marlin", "bitsandbytes", "gguf")
REFUSED = (
    ("enforce_eager", lambda v: v is False, "--no-enforce-eager: compiled code and CUDA graphs skip the "
     "Python hooks that edit and record (the edit would silently not happen); use npti's --compile, which "
     "splits the graphs at the edit"),
    ("enable_prefix_caching", bool, "--enable-prefix-caching: a cached prefix is not recomputed, so its "
     "positions are neither edited (positions=all) nor recorded; drop it"),
    ("speculative_config", bool, "--speculative-config: rejected drafts shift the positions the edit and "
     "its keep draws are keyed by; drop it"),
    ("pipeline_parallel_size", lambda v: (v or 1) > 1, "--pipeline-parallel-size > 1: the hooks see one "
     "stage's layers; use --tensor-parallel instead"),
    ("enable_dbo", bool, "--enable-dbo: micro-batches split the rows the hooks assign to requests; drop it"),
    ("ubatch_size", lambda v: (v or 0) > 1, "--ubatch-size > 1: micro-batches split the rows the hooks "
     "assign to requests; drop it"),
    ("kv_transfer_config", bool, "--kv-transfer-config: a prefill computed elsewhere is not edited or "
     "recorded here; drop it"),
    ("quantization", lambda v: v is not None and v not in WEIGHT_ONLY_QUANT, "--quantization: an "
     "activation-quantised MLP (fp8, nvfp4, ...) fuses the activation into its quantisation kernel and "
     "never calls act_fn, so nothing would be edited or recorded; use a bf16/fp16 or weight-only checkpoint"),
)  # fmt: skip


def refusal(settings: dict[str, Any]) -> str | None:
    """Why vLLM under these engine arguments would not run NPTI's hooks as meant, or None.
    `--no-enforce-eager` is taken with a compilation config that splits at NPTI's op."""
    config = settings.get("compilation_config")
    why = compile_refusal(config)
    if why:
        return why
    splits = _field(config, "splitting_ops") if config is not None else None
    compiled = splits is not None and OP in splits
    for name, bad, why in REFUSED:
        if name == "enforce_eager" and compiled:
            continue
        if name in settings and bad(settings[name]):
            return f"{why} ({name}={settings[name]!r})"
    return None


def neurons_from(d: dict) -> NeuronSet:
    """A neuron set from `npti_lens.vllm.engine.set_payload`'s lists."""
    ints, floats = ("layer", "index"), ("diff", "p_active", "q95")
    cols = {
        k: torch.tensor(d[k], dtype=torch.int64 if k in ints else torch.float64) for k in (*ints, *floats)
    }
    return NeuronSet(**{**d, **cols})
