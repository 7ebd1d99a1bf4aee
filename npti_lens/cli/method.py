"""The method's commands: search, select, import-npti, and the direction baseline's export to llama.cpp."""

from __future__ import annotations

import argparse
import sys

from npti_lens.cli._common import (
    FROM_PROTOCOL,
    Command,
    add_config,
    add_engine_flags,
    add_protocol_flag,
    close_engine,
    config_from,
    fresh_dir,
    fresh_file,
    generate_config,
    load_model_for,
    protocol_of,
)


def search_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.load import ModelConfig
    from npti_lens.workflows.search import SearchConfig

    p.add_argument("--questions", required=True, help="folder of {Trait}.json question files (JSON lines)")
    p.add_argument("--personas", required=True, help="JSON-lines file of persona descriptions per pole key")
    p.add_argument("--out", required=True, help="run folder (answers/ and stats/)")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out")
    add_config(p, ModelConfig)
    add_engine_flags(p)
    add_protocol_flag(p)
    add_config(p, SearchConfig)
    add_config(p, GenerateConfig, from_protocol=FROM_PROTOCOL)


def search(args: argparse.Namespace) -> None:
    from npti_lens.core.files import check_writable
    from npti_lens.workflows.search import SearchConfig, run_search

    check_writable(args.out, folder=True)
    proto = protocol_of(args)
    gcfg = generate_config(args, proto, "search")
    model = load_model_for(args, proto, records=True)
    stats = run_search(
        model,
        args.questions,
        args.personas,
        args.out,
        config_from(args, SearchConfig),
        gcfg,
        protocol=proto,
        resume=args.resume,
        progress=True,
    )
    close_engine(model)
    for name, s in stats.items():
        print(f"{name}: {s.meta.get('n_questions', 0)} questions, {s.n_tokens} answer tokens")
    print(f"statistics and answers in {args.out} (protocol {proto.name})")


def select_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.method.selection import SelectConfig

    p.add_argument("run", metavar="RUN", help="run folder written by npti search")
    p.add_argument("--out", required=True, help="folder for the neuron sets ({Trait}_{pole}/)")
    p.add_argument("--overwrite", action="store_true", help="replace sets already in --out")
    add_config(p, SelectConfig)


def select(args: argparse.Namespace) -> None:
    from npti_lens.method.selection import SelectConfig, report, select_run

    cfg = config_from(args, SelectConfig)
    out = fresh_dir(args.out, args.overwrite)
    sets = select_run(args.run, out, cfg)  # every statistics file is checked before anything is written
    reports = report(sets)
    for r in reports:
        print(f"{r.name}: {r.kept} neurons, {r.positive} with diff > 0, {r.shared} shared with {r.opposite}")
    for w in (w for r in reports for w in r.warnings(cfg)):
        print(f"warning: {w}", file=sys.stderr)
    print(f"{len(sets)} neuron sets -> {out}")


def import_flags(p: argparse.ArgumentParser) -> None:
    from npti_lens.method.neurons import REFERENCE_D_MLP, REFERENCE_MODEL, REFERENCE_N_LAYERS

    p.add_argument("dir", metavar="DIR", help="folder of {Trait}[_reversed]_dict.json[.gz] files")
    p.add_argument("--out", required=True, help="folder for the neuron sets")
    p.add_argument("--model-name", default=REFERENCE_MODEL, help="model the sets belong to")
    p.add_argument("--n-layers", type=int, default=REFERENCE_N_LAYERS, help="layers of that model")
    p.add_argument("--d-mlp", type=int, default=REFERENCE_D_MLP, help="MLP neurons per layer")
    p.add_argument("--overwrite", action="store_true", help="replace sets already in --out")


def import_npti(args: argparse.Namespace) -> None:
    from npti_lens.method.neurons import import_reference
    from npti_lens.method.protocol import load_protocol

    out = fresh_dir(args.out, args.overwrite)
    sets = import_reference(args.dir, model=args.model_name, n_layers=args.n_layers, d_mlp=args.d_mlp)
    for name, ns in sets.items():
        ns.provenance = load_protocol("npti").record()  # made by the released code
        ns.save(out / name)
        print(f"{name}: {len(ns)} neurons")
    print(f"{len(sets)} neuron sets -> {out}")


def export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "direction",
        metavar="DIRECTION",
        help="a pole's folder holding direction.safetensors (select writes one)",
    )
    p.add_argument("--out", required=True, help="the control vector to write (FILE.gguf)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the vector by this (default: 1)")
    p.add_argument(
        "--layers",
        default=None,
        help="blocks to export, e.g. 10,12 or 8-20 (default: every block but 0, which llama.cpp cannot steer)",
    )
    p.add_argument(
        "--model-hint",
        default=None,
        help="controlvector.model_hint, e.g. the llama.cpp architecture (default: the direction's model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def export_vector(args: argparse.Namespace) -> None:
    from npti_lens.core.files import parse_layer_spec
    from npti_lens.method.cvector import export_layers
    from npti_lens.method.directions import Direction

    out = fresh_file(args.out, args.overwrite)
    d = Direction.load(args.direction)
    layers = None if args.layers is None else parse_layer_spec(args.layers, "--layers")
    chosen = export_layers(d.n_layers, layers)
    path = d.to_gguf(out, scale=args.scale, layers=chosen, model_hint=args.model_hint)
    note = "" if args.layers is not None else " (block 0 left out: llama.cpp cannot steer it)"
    print(f"{d.name} x {args.scale:g}: blocks {chosen[0]}..{chosen[-1]} ({len(chosen)}){note} -> {path}")
    print(f"use: llama-cli -m MODEL.gguf --control-vector {path}")


COMMANDS = [
    Command(
        ("search",),
        "answer questions under persona prompts and record neuron statistics",
        search_flags,
        search,
    ),
    Command(("select",), "select the neurons of every trait pole of a search run", select_flags, select),
    Command(("import-npti",), "convert the reference's neuron_results folder", import_flags, import_npti),
    Command(
        ("analyze", "export-vector"),
        "write a pole's direction as a llama.cpp control vector (--control-vector FILE.gguf)",
        export_flags,
        export_vector,
    ),
]
