"""Stage 2: where a neuron lives. Hides gated (Llama, Gemma) vs non-gated (GPT-2) MLPs.

A neuron is `a = act_fn(x @ W_gate)[i]` for gated MLPs and `act_fn(x @ W_in)[i]` otherwise: the
activation before any multiplication with the up projection. TransformerLens exposes the
pre-activation as `blocks.L.mlp.hook_pre`; for gated MLPs `hook_post` holds act(gate) * up and no hook
holds act(gate) alone, so `a` is computed as act_fn(hook_pre) with the HF module's own act_fn, and an
edit of `a` is written into `hook_post` as `a' * up`, `up` read from `hook_pre_linear` of the same pass.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.errors import UserError


@dataclass(frozen=True)
class MLPSites:
    n_layers: int
    d_mlp: int
    gated: bool
    act_fns: tuple[Callable[[torch.Tensor], torch.Tensor], ...]

    @staticmethod
    def pre(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre"

    @staticmethod
    def up(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre_linear"

    @staticmethod
    def post(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


def resid_site(layer: int) -> str:
    """The residual stream after block `layer` (its output): where directions are read and added."""
    return f"blocks.{layer}.hook_resid_post"


def _act_fn(hf_mlp: torch.nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    for attr in ("act_fn", "act", "activation_fn", "activation"):
        fn = getattr(hf_mlp, attr, None)
        if callable(fn):
            return fn
    raise UserError(
        f"{name}: cannot find the activation function of {type(hf_mlp).__name__}; "
        "npti_lens supports MLPs with an act_fn/act attribute (Llama, Qwen2, Mistral, Gemma, GPT-2)"
    )


_SITES: weakref.WeakKeyDictionary[Any, MLPSites] = weakref.WeakKeyDictionary()


def mlp_sites(model: TransformerBridge) -> MLPSites:
    """Describe the model's MLP neurons (worked out once per model); refuse a model whose MLPs have
    no hook_pre."""
    if model in _SITES:
        return _SITES[model]
    n_layers = int(model.cfg.n_layers)
    hooks = model.hook_dict
    act_fns = []
    gated = MLPSites.up(0) in hooks
    for layer in range(n_layers):
        if MLPSites.pre(layer) not in hooks or MLPSites.post(layer) not in hooks:
            raise UserError(
                f"model {model.cfg.model_name}: layer {layer} has no {MLPSites.pre(layer)}; "
                "mixture-of-experts and MLP-less blocks are not supported"
            )
        if (MLPSites.up(layer) in hooks) != gated:
            raise UserError(f"model {model.cfg.model_name}: mixes gated and non-gated MLPs")
        mlp = model.blocks[layer].mlp
        act_fns.append(_act_fn(mlp.original_component, MLPSites.pre(layer)))
    sites = MLPSites(n_layers=n_layers, d_mlp=int(model.cfg.d_mlp), gated=gated, act_fns=tuple(act_fns))
    _SITES[model] = sites
    return sites


@contextlib.contextmanager
def hooks_added(model: TransformerBridge, hooks: list[tuple[str, Callable[..., Any]]]) -> Iterator[None]:
    """Add forward hooks (name, fn) for the block; on exit remove exactly these, also on error."""
    added = []
    try:
        for name, fn in hooks:
            if name not in model.hook_dict:
                raise UserError(f"model {model.cfg.model_name} has no hook {name}")
            hp = model.hook_dict[name]
            added.append((hp, hp.add_hook(fn)))
        yield
    finally:
        for hp, handle in reversed(added):
            handle.hook.remove()
            if handle in hp.fwd_hooks:
                hp.fwd_hooks.remove(handle)


logger = logging.getLogger(__name__)
_PLAIN: weakref.WeakKeyDictionary[TransformerBridge, torch.nn.Module | None] = weakref.WeakKeyDictionary()


def any_hook(model: TransformerBridge) -> bool:
    """True when some TransformerLens hook is on the model (an induction, a recording, a user's)."""
    return any(hp._forward_hooks or hp._forward_pre_hooks for hp in model.hook_dict.values())


def plain_hf(model: TransformerBridge) -> torch.nn.Module | None:
    """The HF model without the bridge's per-module wrappers, on the very same weight tensors (no
    copy), built once; None where its weights do not map one to one. Forwards through it skip the
    wrappers, so it serves only where no hook is asked for."""
    if model in _PLAIN:
        return _PLAIN[model]
    hf = model.original_model
    plain, why = None, ""
    try:
        with torch.device("meta"):
            plain = type(hf)(hf.config)
        want = set(plain.state_dict())
        found = {k.replace("._original_component", ""): v for k, v in hf.state_dict(keep_vars=True).items()}
        if want <= set(found):
            plain.load_state_dict({k: found[k] for k in want}, assign=True, strict=True)
            plain.tie_weights()
            buffers = {k.replace("._original_component", ""): v for k, v in hf.named_buffers()}
            for name, b in list(plain.named_buffers()):  # non-persistent ones (rotary frequencies)
                if b.is_meta and name in buffers:
                    owner, _, leaf = name.rpartition(".")
                    plain.get_submodule(owner)._buffers[leaf] = buffers[name]
            plain.eval()
            if any(p.is_meta for p in plain.parameters()) or any(b.is_meta for b in plain.buffers()):
                plain, why = None, "some of its tensors are not the bridge's"
            else:  # the bridge may compute a module its own way (GPT-2's attention): exact or unused
                probe = torch.arange(min(8, int(hf.config.vocab_size)), device=hf.device)[None]
                with torch.inference_mode():
                    if not torch.equal(hf(input_ids=probe).logits, plain(input_ids=probe).logits):
                        plain, why = (
                            None,
                            "the bridge computes a module its own way (a probe forward differs)",
                        )
        else:
            plain, why = None, f"the bridge lacks {len(want - set(found))} of its weights"
    except Exception as exc:  # noqa: BLE001 - an architecture this does not fit keeps the bridge path
        plain, why = None, f"{type(exc).__name__}: {exc}"
    if plain is None:
        logger.info("%s: no plain-HF fast path (%s); forwards run through the bridge", type(hf).__name__, why)
    _PLAIN[model] = plain  # beside the model, not on it: a module attribute would join its state
    return plain


def forward_module(model: TransformerBridge) -> torch.nn.Module:
    """What a forward of `model` should run: the plain HF model where no hook is on it and one
    exists (`plain_hf`), else the bridge's wrapped HF model, so every hook fires."""
    plain = None if any_hook(model) else plain_hf(model)
    return model.original_model if plain is None else plain
