"""`npti serve`: an induced model behind vLLM's own OpenAI-compatible server.

The server is vLLM's (its FastAPI app, routes, streaming, auth flags), started with our worker
extension (`npti_lens.vllm.worker`) and request check (`npti_lens.vllm.check`); the only step added
to vLLM's start-up is loading the neuron folders into the workers. A request picks its induction in
the body, through vLLM's `vllm_xargs` (flat values, handed to `SamplingParams.extra_args`):

    client.chat.completions.create(model=..., messages=[...], extra_body={"vllm_xargs":
        {"npti_trait": "Extraversion", "npti_pole": "low", "npti_gamma": 1.2}})

or, the same, `extra_body={"npti": {"trait": "Extraversion", "pole": "low", "gamma": 1.2}}`.
No npti arguments: the plain model. A malformed one, or a set that is not served: HTTP 400.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from npti_lens.core.constants import POLES, TRAITS, pole_name
from npti_lens.core.errors import UserError
from npti_lens.method.induction import InduceConfig
from npti_lens.model.gguf import is_gguf_spec, resolve_gguf
from npti_lens.vllm.args import compile_settings, refusal
from npti_lens.vllm.engine import EXTENSION, use_v1_runner, vllm_available

CHECK = "npti_lens.vllm.check:RequestCheck"
NESTED = "npti_lens.vllm.check.NestedArgs"


def neuron_folders(specs: list[str]) -> dict[str, str]:
    """`[NAME=]FOLDER` specs as {name: absolute folder}; the name defaults to the folder's name."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec).name, spec
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--neurons: {folder} is not a folder of neuron sets (npti select --out)")
        if not any((path / pole_name(t, p)).is_dir() for t in TRAITS for p in POLES):
            raise UserError(
                f"--neurons: {folder} holds no {pole_name(TRAITS[0], POLES[0])}/-style neuron set"
            )
        for t in TRAITS:
            have = [p for p in POLES if (path / pole_name(t, p)).is_dir()]
            if len(have) == 1:  # an induction clamps the opposite pole: both are needed
                missing = pole_name(t, next(p for p in POLES if p not in have))
                raise UserError(f"--neurons: {folder} has {pole_name(t, have[0])}/ but not {missing}/")
        if name in out:
            raise UserError(f"--neurons: the name {name!r} is given twice; name them NAME=FOLDER")
        out[name] = str(path)
    return out


def compiled_argv(compile: bool) -> list[str]:  # noqa: A002
    """vLLM server flags for eager mode, or for `compile_settings`' compilation."""
    if not compile:
        return ["--enforce-eager"]
    return [
        "--no-enforce-eager",
        "--compilation-config",
        json.dumps(compile_settings()["compilation_config"]),
    ]


def vllm_args(
    model: str,
    *,
    host: str,
    port: int,
    dtype: str,
    tensor_parallel: int,
    kv_cache_gib: float | None,
    extra: list[str] | None = None,
    compile: bool = False,  # noqa: A002 - compiled, with piecewise CUDA graphs split at NPTI's op
) -> Any:
    """vLLM's own server arguments, parsed by its own parser, with what NPTI's edit needs."""
    import torch
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    served = []
    if is_gguf_spec(model):  # vLLM serves the dequantised folder, under the name the user gave
        served = ["--served-model-name", model]
        model = str(resolve_gguf(model).folder)
    argv = [
        "--model", model, *served, "--host", host, "--port", str(port), "--dtype", dtype,
        "--tensor-parallel-size", str(tensor_parallel),
        *compiled_argv(compile), "--no-enable-prefix-caching", "--generation-config", "vllm",
        "--worker-extension-cls", EXTENSION, "--logits-processors", CHECK, "--middleware", NESTED,
    ]  # fmt: skip
    if kv_cache_gib is None and not torch.cuda.is_available():
        kv_cache_gib = 1.0
    if kv_cache_gib is not None:
        argv += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * (1 << 30)))]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv + list(extra or []))
    validate_parsed_serve_args(args)
    why = refusal(vars(args))  # a --vllm-arg that undoes what the hooks need
    if why:
        raise UserError(f"--vllm-arg: {why}")
    return args


def serve(args: Any, neurons: dict[str, str], induce_defaults: InduceConfig) -> None:
    """Run vLLM's OpenAI server on `args` (see `vllm_args`) with `neurons` loaded; blocks."""
    why = vllm_available()
    if why:
        raise UserError(f"npti serve needs vLLM ({why}); install it (README: Engines)")
    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    from npti_lens.vllm.check import NEURONS_ENV

    cli_env_setup()
    use_v1_runner()
    os.environ[NEURONS_ENV] = json.dumps(neurons)  # for the request check in this process
    if args.tensor_parallel_size > 1:
        os.environ.setdefault(
            "VLLM_CPU_OMP_THREADS_BIND", "|".join(map(str, range(args.tensor_parallel_size)))
        )
    uvloop.run(_run(args, neurons, asdict(induce_defaults)))


async def _run(args: Any, neurons: dict[str, str], base: dict[str, Any]) -> None:
    # vLLM's run_server / run_server_worker, with the neuron sets loaded before the app starts.
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve, build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server

    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine:
        await engine.collective_rpc("npti_setup", args=(base,))
        for name, folder in neurons.items():
            await engine.collective_rpc("npti_load", args=(name, folder))
        shutdown = await build_and_serve(engine, listen_address, sock, args)
    try:
        await shutdown
    finally:
        sock.close()
