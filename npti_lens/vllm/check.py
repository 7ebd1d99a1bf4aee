"""What vLLM must not run NPTI under, read from a running vLLM's configuration (`config_refusal`,
called by the workers at set-up); what `npti serve` checks of a request before vLLM admits it: its
npti_* arguments; and the middleware that takes them as a nested `"npti": {...}` object too.

vLLM calls a logits processor's `validate_params` in the API server for every request; a ValueError
there is an HTTP 400 with the message, and the server keeps serving. `RequestCheck` changes no
logits. The neuron folders it checks against come from `NPTI_SERVE_NEURONS` (JSON {name: folder}),
which `npti_lens.vllm.serve` sets. This module imports vLLM: load it only where vLLM is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from npti_lens.core.constants import pole_name
from npti_lens.vllm.args import compile_refusal, induction_args, refusal

NEURONS_ENV = "NPTI_SERVE_NEURONS"


def served_neurons() -> dict[str, str]:
    return json.loads(os.environ.get(NEURONS_ENV, "{}"))


def check_request(extra: dict | None) -> None:
    """Raise ValueError (HTTP 400) for npti arguments that are malformed or name no loaded set."""
    args = induction_args(extra)
    if not args:
        return
    if "npti_record" in args or "npti_record_from" in args:
        raise ValueError("npti_record is for offline searches (npti search --engine vllm), not the server")
    sets = served_neurons()
    if "npti_induction" in args:
        name, _, rest = str(args["npti_induction"]).partition("/")
        trait, _, pole = rest.partition("/")
        args = {**args, "npti_neurons": name, "npti_trait": trait, "npti_pole": pole}
        induction_args(args)  # the trait and pole named in the key, checked
    if "npti_trait" not in args:
        if any(k in args for k in ("npti_gamma", "npti_neurons", "npti_keep_prob")):
            raise ValueError("an induction needs npti_trait and npti_pole")
        return
    if not sets:
        raise ValueError("this server was started without --neurons: it serves the plain model only")
    name = args.get("npti_neurons", next(iter(sets)))
    if name not in sets:
        raise ValueError(f"npti_neurons {name!r} is not served; served: {', '.join(sets)}")
    if not (Path(sets[name]) / pole_name(args["npti_trait"], args["npti_pole"])).is_dir():
        raise ValueError(f"neuron set {name!r} has no {pole_name(args['npti_trait'], args['npti_pole'])}")


class RequestCheck(LogitsProcessor):
    """A logits processor that only validates (see the module doc)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_request(sampling_params.extra_args)

    def __init__(self, vllm_config: object, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass


def nested_to_xargs(body: bytes) -> bytes:
    """A request body's friendlier `"npti": {"trait": ..., "gamma": ...}` as vLLM's flat
    `"vllm_xargs": {"npti_trait": ..., "npti_gamma": ...}`; other bodies unchanged."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return body  # not JSON: vLLM answers it
    if not isinstance(data, dict) or "npti" not in data:
        return body
    nested = data.pop("npti")
    if not isinstance(nested, dict):
        raise ValueError(
            '"npti" must be an object such as {"trait": "Extraversion", "pole": "low", "gamma": 1.2}'
        )
    xargs = dict(data.get("vllm_xargs") or {})
    for key, value in nested.items():
        name = key if key.startswith("npti_") else f"npti_{key}"
        if name in xargs:
            raise ValueError(f"{name} is given twice (in npti and in vllm_xargs)")
        xargs[name] = int(value) if isinstance(value, bool) else value  # vllm_xargs holds no booleans
    data["vllm_xargs"] = xargs
    return json.dumps(data).encode()


class NestedArgs:
    """ASGI middleware of `npti serve`: applies `nested_to_xargs` to POST bodies (a bad `npti`
    object is an HTTP 400 here)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = nested_to_xargs(b"".join(chunks))
        except ValueError as e:
            error = json.dumps(
                {"error": {"message": str(e), "type": "BadRequestError", "code": 400}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            return await send({"type": "http.response.body", "body": error})
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def config_refusal(vllm_config: Any) -> str | None:
    """Why a running vLLM's configuration would skip or corrupt the hooks (see `refusal`), or None.
    Compiled code is taken where no CUDA graph captures NPTI's op (`compile_refusal`): the workers
    then check that every activation carries the op (`npti_lens.vllm.ops`)."""
    from vllm.config import CompilationMode, CUDAGraphMode

    model, cache, par = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
    comp = vllm_config.compilation_config
    graphs = comp.cudagraph_mode != CUDAGraphMode.NONE
    why = compile_refusal(
        {
            "cudagraph_mode": comp.cudagraph_mode.name,
            "splitting_ops": list(comp.splitting_ops or [])
            if comp.mode == CompilationMode.VLLM_COMPILE
            else None,
        }
    )
    if why:
        return why
    if graphs and comp.mode != CompilationMode.VLLM_COMPILE:
        return (
            f"CUDA graphs ({comp.cudagraph_mode.name}) without vLLM's piecewise compilation capture the edit"
        )
    settings = {
        "enable_prefix_caching": cache.enable_prefix_caching,
        "speculative_config": vllm_config.speculative_config,
        "pipeline_parallel_size": par.pipeline_parallel_size,
        "enable_dbo": getattr(par, "enable_dbo", False),
        "ubatch_size": getattr(par, "ubatch_size", 0),
        "kv_transfer_config": vllm_config.kv_transfer_config,
        "quantization": model.quantization,
    }
    return refusal(settings)
