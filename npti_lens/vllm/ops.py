"""NPTI's edit point as a custom op, so that it survives vLLM's compilation and CUDA graphs.

Python hooks on submodules do not survive vLLM's compilation: the model is traced once
(`vllm/compilation/wrapper.py`, `TorchCompileWithNoGuardsWrapper`, no guards) with nothing to edit,
and CUDA graphs replay kernels without running Python. So every MLP activation vLLM builds in a
worker of ours (`SiluAndMul`, `GeluAndMul`, GPT-2's `NewGELU`, ...) is our subclass (vLLM's
out-of-tree op registry, `CustomOp.register_oot`), whose forward is the activation followed by
`torch.ops.npti.act(x, out, token)`: an opaque op that edits `out` in place. The compiler keeps it
as a call (its fake kernel does nothing), vLLM's piecewise CUDA graphs split around it when it is
listed in `compilation_config.splitting_ops` (as they do around attention), and at run time its
Python body hands (x, out) to the worker that claimed the module's `token` (none: nothing happens).

This module imports vLLM; the worker module installs it when vLLM is importable.
"""

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from npti_lens.vllm.args import OP  # noqa: F401 - the name vLLM's splitting_ops take

# The activations whose modules carry the op (vllm.model_executor.layers.activation class names).
WRAPPED = ("SiluAndMul", "GeluAndMul", "NewGELU", "FastGELU", "QuickGELU", "GELU")

_handlers: dict[int, Callable[[Tensor, Tensor], None]] = {}  # token -> the worker's callback
_tokens = itertools.count(1)
_library: torch.library.Library | None = None


def _act(x: Tensor, out: Tensor, token: int) -> None:
    handler = _handlers.get(token)
    if handler is not None:
        handler(x, out)


def _act_fake(x: Tensor, out: Tensor, token: int) -> None:
    return None


def claim(module: torch.nn.Module, handler: Callable[[Tensor, Tensor], None]) -> bool:
    """Route `module`'s op calls to `handler(x, out)`; False if the module carries no op."""
    token = getattr(module, "npti_token", None)
    if token is None:
        return False
    _handlers[token] = handler
    return True


def release(module: torch.nn.Module) -> None:
    """Stop routing `module`'s op calls (they do nothing again)."""
    _handlers.pop(getattr(module, "npti_token", None), None)


def base_name(module: torch.nn.Module) -> str:
    """The vLLM class a module is (ours are subclasses: their base's name)."""
    return getattr(type(module), "npti_base", type(module).__name__)


def _wrap(base: type) -> type:
    def __init__(self, *args, **kwargs) -> None:  # noqa: N807
        base.__init__(self, *args, **kwargs)
        self.npti_token = next(_tokens)  # a constant the compiler bakes into the traced call

    def forward(self, x: Tensor) -> Tensor:
        out = base.forward(self, x)
        torch.ops.npti.act(x, out, self.npti_token)
        return out

    return type(
        f"NPTI{base.__name__}",
        (base,),
        {"__init__": __init__, "forward": forward, "npti_base": base.__name__},
    )


def install() -> None:
    """Register the op and our activation classes in this process (once)."""
    global _library
    if _library is not None:
        return
    from vllm.model_executor import custom_op
    from vllm.model_executor.layers import activation
    from vllm.utils.torch_utils import direct_register_custom_op

    _library = torch.library.Library("npti", "FRAGMENT")  # noqa: TOR901 - kept alive for the op's lifetime
    direct_register_custom_op("act", _act, mutates_args=["out"], fake_impl=_act_fake, target_lib=_library)
    for name in WRAPPED:
        base = getattr(activation, name)
        if name in custom_op.op_registry_oot:  # another plugin replaced it: leave it, the check refuses
            continue
        cls = _wrap(base)
        custom_op.op_registry_oot[name] = cls  # what CustomOp.__new__ instantiates for `base`
        cls.name = base.name  # keep vLLM's op name: its custom_ops switches still apply
