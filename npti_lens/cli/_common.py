"""What every command family shares: flags made from config dataclasses, the protocol flag, model
loading, and output paths checked before any work. Imports no torch (configs are passed in)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npti_lens.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its path (`("analyze", "ablation")`), help, flags and handler.

    `flags` adds the flags (importing the configs it needs); it runs only for the command being
    parsed, so `npti --help` imports no torch.
    """

    path: tuple[str, ...]
    help: str
    flags: typing.Callable[[argparse.ArgumentParser], None]
    run: typing.Callable[[argparse.Namespace], None]


FROM_PROTOCOL = ("max_new_tokens", "repetition_penalty", "temperature", "keep", "clamp_order", "clamp_layers")
PROTOCOL_HELP = (
    "npti (the paper's released code: templates, sampling, judge prompts, keep rule; the default), "
    "lens (npti_lens 0.1's own prompts), organism (the default with --model organism), or a JSON file "
    "of the same layout"
)


def add_config(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    required: Sequence[str] = (),
    from_protocol: Sequence[str] = (),
) -> None:
    """Add a --flag for every field of dataclass `cls`; help text is the field's metadata.

    Fields named in `from_protocol` default to None: the run's protocol fills them.
    """
    hints = typing.get_type_hints(cls)
    existing = {a.dest for a in parser._actions}
    for f in dataclasses.fields(cls):
        if f.name in existing:
            continue  # shared with another config (e.g. --seed): one flag sets both
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        if args and type(None) in args:
            kind = next(a for a in args if a is not type(None))
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif f.name in required or f.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=f.name, type=kind, required=True, help=help_text)
        elif f.name in from_protocol:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=None, help=f"{help_text} (default: the protocol's)"
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=default, help=f"{help_text} (default: {default})"
            )


def config_from(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_protocol_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default=None, help=PROTOCOL_HELP)


def protocol_of(args: argparse.Namespace) -> Any:
    """The run's protocol: --protocol, else organism for --model organism, else npti."""
    from npti_lens.method.protocol import load_protocol

    return load_protocol(args.protocol, model=getattr(args, "model", None))


def generate_config(args: argparse.Namespace, proto: Any, stage: str) -> Any:
    from npti_lens.model.generation import GenerateConfig

    return proto.generate_config(
        stage, **{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerateConfig)}
    )


def induce_config(args: argparse.Namespace, proto: Any) -> Any:
    from npti_lens.method.induction import InduceConfig

    return proto.induce_config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(InduceConfig)})


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.load import EngineConfig

    add_config(p, EngineConfig)


def load_model_for(args: argparse.Namespace, proto: Any, *, records: bool = False) -> Any:
    """The model of --model/--device/--dtype; --dtype auto: the protocol's dtype on a GPU, else float32.

    With --engine vllm (where the command has the flag): a `VLLMEngine` instead of a TransformerBridge.
    `records`: the command records search statistics (which --compile cannot).
    """
    from transformers.utils import logging as hf_logging

    from npti_lens.model.load import EngineConfig, ModelConfig, load_model

    if not getattr(args, "verbose", False):
        hf_logging.disable_progress_bar()  # the weight-loading bar; ours stay
    if hasattr(args, "engine"):
        ecfg = config_from(args, EngineConfig)
        if ecfg.engine not in ("tl", "vllm"):
            raise UserError(f"--engine: unknown engine {ecfg.engine!r}; choose tl or vllm")
        if ecfg.compile and ecfg.engine != "vllm":
            raise UserError("--compile: only with --engine vllm (the TransformerLens loop runs eagerly)")
        if ecfg.compile and records:
            raise UserError(
                "--compile: this command records search statistics, which need eager vLLM (its residual "
                "sums are hooks compiled code skips); drop --compile"
            )
        if ecfg.engine == "vllm":
            return load_engine(args, proto, ecfg)
        if ecfg.tensor_parallel != 1:
            raise UserError("--tensor-parallel: only with --engine vllm")
    return load_model(config_from(args, ModelConfig), gpu_dtype=proto.gpu_dtype)


def close_engine(model: Any) -> None:
    """End an engine's worker processes (a TransformerBridge has nothing to close)."""
    close = getattr(type(model), "close", None)
    if close is not None:
        close(model)


def load_engine(args: argparse.Namespace, proto: Any, ecfg: Any) -> Any:
    import torch

    from npti_lens.model.load import ORGANISM
    from npti_lens.vllm.engine import VLLMEngine

    model = args.model
    if model == ORGANISM:
        from npti_lens.organism import organism_path

        model = str(organism_path())
    dtype = args.dtype
    if dtype == "auto":
        dtype = proto.gpu_dtype if torch.cuda.is_available() else "float32"
    return VLLMEngine(
        model,
        dtype=dtype,
        tensor_parallel=ecfg.tensor_parallel,
        seed=getattr(args, "seed", 0) or 0,
        kv_cache_gib=ecfg.kv_cache_gib,
        induce_defaults=proto.induce_config(),
        compile=ecfg.compile,
    )


def fresh_file(path: str, overwrite: bool, flag: str = "--out") -> Path:
    """An output file that is absent (or replaced with --overwrite), in a place that can be written."""
    from npti_lens.core.files import check_writable

    p = check_writable(path, flag, folder=False)
    if p.exists() and not overwrite:
        raise UserError(f"{flag}: {p} exists; pass --overwrite to replace it or choose another path")
    return p


def writable_dir(path: str) -> Path:
    """An output folder that can be written, whatever it holds (outputs remade from their inputs)."""
    from npti_lens.core.files import check_writable

    return check_writable(path, "--out", folder=True)


def fresh_dir(path: str, overwrite: bool, holds: str | None = None) -> Path:
    """An output folder that is empty or absent, unless --overwrite says to write into it.

    With `holds` (a file name), only a folder holding that file counts as taken.
    """
    from npti_lens.core.files import check_writable

    out = check_writable(path, "--out", folder=True)
    taken = (out / holds).exists() if holds else out.exists() and any(out.iterdir())
    if taken and not overwrite:
        what = f"already holds {holds}" if holds else "is not empty"
        raise UserError(f"--out: {out} {what}; pass --overwrite or choose another folder")
    return out


def add_target_flags(p: argparse.ArgumentParser) -> None:
    """The flags naming the pole to induce and where its neuron sets are (induce, analyze ...)."""
    p.add_argument("--neurons", required=True, help="folder of neuron sets (npti select)")
    p.add_argument("--trait", required=True, help="trait to induce")
    p.add_argument("--pole", required=True, help="high or low")
    p.add_argument(
        "--allow-other-model",
        action="store_true",
        help="apply neuron sets selected on another model of the same shape",
    )
