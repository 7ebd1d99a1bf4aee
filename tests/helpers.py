"""What the tests share: tiny randomly initialised HF models of five families, built and saved
locally (never the hub), their word-level tokenizer, questions, personas and the reference data path.
Imports npti_lens only inside functions, so the conftest's beartype hook is in place first."""

from __future__ import annotations

import json
from pathlib import Path

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
    # the rating options of an inventory (npti_lens.administer)
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
