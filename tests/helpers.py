"""What the tests share: tiny randomly initialised HF models of five families, built and saved
locally (never the hub), their word-level tokenizer, questions, personas and the reference data path.
Imports npti_lens only inside functions, so the conftest's beartype hook is in place first."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "npti-original"

WORDS = [
    "i",
    "you",
    "we",
    "they",
    "like",
    "love",
    "hate",
    "enjoy",
    "go",
    "stay",
    "out",
    "home",
    "party",
    "friends",
    "people",
    "quiet",
    "alone",
    "book",
    "read",
    "write",
    "plan",
    "work",
    "rest",
    "calm",
    "worry",
    "happy",
    "sad",
    "new",
    "old",
    "idea",
    "art",
    "music",
    "travel",
    "trip",
    "careful",
    "rules",
    "help",
    "share",
    "trust",
    "kind",
    "rude",
    "fear",
    "nervous",
    "relaxed",
    "weekend",
    "evening",
    "morning",
    "city",
    "park",
    "talk",
    "listen",
    "think",
    "feel",
    "always",
    "never",
    "often",
    "sometimes",
    "very",
    "really",
    "much",
    "little",
    "the",
    "a",
    "to",
    "and",
    "or",
    "but",
    "with",
    "at",
    "on",
    "in",
    "of",
    ".",
    ",",
    "!",
    "?",
    "what",
    "how",
    "would",
    "do",
    "your",
    # the rating options of an inventory (npti_lens.evaluation.profiles)
    "1",
    "2",
    "3",
    "4",
    "5",
    "accurate",
    "inaccurate",
]
FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "gpt2")


def make_tokenizer(chat: bool):
    """The tests' word-level tokenizer (the organism's builder, other words), chat template or not."""
    from npti_lens.organism.train import CHAT_TEMPLATE, word_tokenizer

    return word_tokenizer(
        WORDS, chat_template=CHAT_TEMPLATE if chat else None, lowercase=False, bos_on_plain_text=True
    )


def make_config(family: str, vocab: int):
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    del GemmaConfig
    common = dict(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.3,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "gemma2":
        # Gemma scales embeddings by sqrt(d_model): a smaller init keeps its outputs varied.
        return Gemma2Config(**{**common, "initializer_range": 0.02}, head_dim=12, sliding_window=64)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=48,
            n_inner=96,
            n_layer=3,
            n_head=4,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            initializer_range=0.3,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    raise ValueError(family)


def build_tiny(family: str, folder: Path, *, chat: bool | None = None, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    chat = family == "llama" if chat is None else chat
    tok = make_tokenizer(chat)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, len(tok)))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def hf_reference(folder: Path):
    """The same weights as a plain HF model (eager attention), outside TransformerLens."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


QUESTIONS = [
    "what would you do on the weekend ?",
    "how would you plan a trip to the city ?",
    "what do you think of a party with new people ?",
    "how do you feel in the morning ?",
    "would you read a book or go out ?",
    "what would you do with a new idea ?",
    "how do you help your friends ?",
]
PERSONAS = [
    {
        "Extraversion": "you love a party and talk with people",
        "Extraversion_reversed": "you stay home alone and read",
        "Openness": "you love new art and ideas",
        "Openness_reversed": "you like old rules",
        "Conscientiousness": "you plan work very careful",
        "Conscientiousness_reversed": "you never plan",
        "Agreeableness": "you help and trust people",
        "Agreeableness_reversed": "you are rude",
        "Neuroticism": "you worry and feel nervous",
        "Neuroticism_reversed": "you feel calm and relaxed",
    },
    {
        "Extraversion": "you go out with friends often",
        "Extraversion_reversed": "you like quiet evening alone",
        "Openness": "you enjoy travel and music",
        "Openness_reversed": "you stay with old ideas",
        "Conscientiousness": "you always work and plan",
        "Conscientiousness_reversed": "you rest and never work",
        "Agreeableness": "you are kind and share",
        "Agreeableness_reversed": "you never share",
        "Neuroticism": "you feel sad and fear much",
        "Neuroticism_reversed": "you are happy and calm",
    },
]


def write_data(folder: Path, traits=("Extraversion",), n: int = 7) -> tuple[Path, Path]:
    qdir = folder / "questions"
    qdir.mkdir(parents=True, exist_ok=True)
    for t in traits:
        (qdir / f"{t}.json").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS[:n]))
    personas = folder / "personas.jsonl"
    personas.write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
    return qdir, personas


def build_tiny_vllm(family: str, folder: Path, *, seed: int = 0, init: float | None = None) -> Path:
    """A tiny chat model that vLLM's CPU attention takes (head_dim 64; it rejects 16). Weights drawn
    with std 0.1, Gemma-2's with 0.02: at 0.1 its greedy answer is one token repeated, edit or not."""
    init = init if init is not None else (0.02 if family == "gemma2" else 0.1)
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer(True)
    cfg = make_config(family, len(tok))
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads = 128, 2, 1
    cfg.intermediate_size, cfg.head_dim, cfg.initializer_range = 256, 64, init
    cfg.max_position_embeddings = 2048  # room for the judge's prompts (npti serve as a judge)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_vllm_with_sets(family: str, folder: Path):
    """A tiny vLLM-ready model (`build_tiny_vllm`), its TransformerBridge, and random high and low
    sets for it: (folder, bridge, high, low)."""
    from npti_lens.model.load import load_model, model_id
    from npti_lens.model.sites import mlp_sites

    folder = build_tiny_vllm(family, folder)
    tl = load_model(str(folder))
    sites = mlp_sites(tl)
    hi, lo = random_pole_sets(model_id(tl), sites.n_layers, sites.d_mlp)
    return folder, tl, hi, lo


def random_pole_sets(model: str, n_layers: int, d_mlp: int, n: int = 60, trait: str = "Extraversion"):
    """A high and a low neuron set of `n` random neurons each, with random diff and q95 (seeded)."""
    from npti_lens.method.neurons import NeuronSet

    out = []
    for pole, seed in (("high", 1), ("low", 2)):
        g = torch.Generator().manual_seed(seed)
        flat = torch.randperm(n_layers * d_mlp, generator=g)[:n]
        diff = torch.rand(n, generator=g, dtype=torch.float64) * 0.5
        order = diff.argsort(descending=True)
        out.append(
            NeuronSet(
                trait=trait, pole=pole, model=model, n_layers=n_layers, d_mlp=d_mlp,
                layer=(flat // d_mlp)[order], index=(flat % d_mlp)[order], diff=diff[order],
                p_active=torch.rand(n, generator=g, dtype=torch.float64),
                q95=torch.rand(n, generator=g, dtype=torch.float64) * 2,
            )
        )  # fmt: skip
    return out[0], out[1]


@contextlib.contextmanager
def npti_server(args: list[str], log_path: Path, wait_s: float = 600):
    """`npti serve ARGS` on a free port, as a subprocess; yields an `openai` client once it answers."""
    import socket
    import subprocess
    import sys
    import time

    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "npti_lens.cli", "serve", *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    try:
        deadline = time.time() + wait_s
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(log_path.read_text()[-3000:]) from None
                time.sleep(2)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def search_and_select(model_dir: Path, root: Path, *, min_neurons: int, gen: list[str]) -> tuple[Path, Path]:
    """`npti search` (Extraversion, the shared questions and personas) and `npti select` into
    `root/run` and `root/neurons`."""
    from npti_lens.cli import main

    qdir, personas = write_data(root)
    run, neurons = root / "run", root / "neurons"
    argv = ["search", "--model", str(model_dir), "--questions", str(qdir), "--personas", str(personas),
            "--out", str(run), "--traits", "Extraversion", *gen]  # fmt: skip
    assert main(argv) == 0
    assert main(["select", str(run), "--out", str(neurons), "--min-neurons", str(min_neurons)]) == 0
    return run, neurons


# ----- what CI installs: there a missing one fails its tests; elsewhere they skip ------------------


def missing_vllm() -> str | None:
    from npti_lens.vllm.engine import vllm_available

    return vllm_available()


def missing_smollm2() -> str | None:
    from npti_lens.core.errors import UserError
    from npti_lens.model.gguf import smollm2_path

    try:
        smollm2_path()
    except UserError as e:
        return str(e)
    return None


def missing_module(name: str, wheel: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(name) is not None else f"{wheel} is not installed"


def missing_organism() -> str | None:
    from npti_lens.core.constants import ORGANISM_WEIGHTS

    return (
        None if (ORGANISM_WEIGHTS / "config.json").is_file() else f"no organism weights in {ORGANISM_WEIGHTS}"
    )


def needs(what: str, missing: str | None) -> pytest.MarkDecorator:
    """Mark tests that need `what` (installed by CI): they skip where it is missing, but under
    CI=true they fail, so a CI without the engine or the model cannot pass green (conftest)."""
    return pytest.mark.needs(what=what, missing=missing)


def require(what: str, missing: str | None) -> None:
    """`needs` inside a test: skip, or fail under CI=true, where `what` is missing."""
    if missing is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true: {what} must be installed here ({missing})", pytrace=False)
    pytest.skip(f"{what}: {missing}")
