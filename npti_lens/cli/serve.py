"""Serving and scale-out: serve (an induced model behind vLLM's OpenAI server) and merge (shards of a search)."""

from __future__ import annotations

import argparse

from npti_lens.cli._common import Command, add_protocol_flag, protocol_of, writable_dir


def serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="Hugging Face model id, local folder of HF weights, a .gguf file, or smollm2 (served under that name)",
    )
    p.add_argument(
        "--neurons",
        action="append",
        default=[],
        help="[NAME=]FOLDER of neuron sets (npti select --out); repeat for several; requests name one "
        "with npti_neurons (default: the first)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--dtype", default="auto", help="auto: the protocol's on a GPU, float32 on a CPU")
    p.add_argument("--tensor-parallel", type=int, default=1, help="GPUs (or CPU ranks) to shard over")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="GiB of KV cache (CPU default: 1)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the model and, on a GPU, capture piecewise CUDA graphs split at NPTI's edit "
        "(default: eager)",
    )
    p.add_argument(
        "--vllm-arg", action="append", default=[], help="one more argument for vLLM's server (repeat)"
    )
    add_protocol_flag(p)


def serve(args: argparse.Namespace) -> None:
    import torch

    from npti_lens.vllm.serve import neuron_folders, serve, vllm_args

    neurons = neuron_folders(args.neurons)
    proto = protocol_of(args)
    dtype = (
        args.dtype if args.dtype != "auto" else (proto.gpu_dtype if torch.cuda.is_available() else "float32")
    )
    vargs = vllm_args(
        args.model, host=args.host, port=args.port, dtype=dtype, tensor_parallel=args.tensor_parallel,
        kv_cache_gib=args.kv_cache_gib, extra=args.vllm_arg, compile=args.compile,
    )  # fmt: skip
    print(
        f"serving {args.model} on http://{args.host}:{args.port}/v1 with {', '.join(neurons) or 'no'} neuron sets"
    )
    serve(vargs, neurons, proto.induce_config())


def merge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="search run folders of the shards (npti search --shard i/N)")
    p.add_argument("--out", required=True, help="the merged run folder")


def merge(args: argparse.Namespace) -> None:
    from npti_lens.workflows.merge import merge_runs

    out = writable_dir(args.out)
    merged = merge_runs(args.runs, out)
    for name, s in merged.items():
        print(f"{name}: {s.n_tokens} answer tokens from {len(args.runs)} shards -> {out}")


COMMANDS = [
    Command(
        ("serve",),
        "serve a model with NPTI inductions on vLLM's OpenAI-compatible server",
        serve_flags,
        serve,
    ),
    Command(
        ("merge",), "merge the shards of a search (npti search --shard i/N) into one run", merge_flags, merge
    ),
]
