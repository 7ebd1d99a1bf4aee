"""Prompts: the persona prompt of search, the neutral prompt of induction, chat templates, BOS.

The exact text given to the model is kept (it goes into every output line as `prompt`) and is
tokenized without adding special tokens when a chat template already wrote them, so no prompt ever
starts with two BOS tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Persona prompt used for search: the pole's description is the system message.
PERSONA_SYSTEM = "{description} Answer the question below as this person would, in your own words."
# Plain-text layout for models without a chat template.
PLAIN_WITH_SYSTEM = "{system}\n\nQuestion: {question}\nAnswer:"
PLAIN_NO_SYSTEM = "Question: {question}\nAnswer:"
# Neutral prompt used for generate / induce: the question alone.
NEUTRAL_SYSTEM = ""


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: list[int]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, question: str, system: str = "") -> str:
    """The prompt text for a question, with an optional system message, chat template applied."""
    if not has_chat_template(tokenizer):
        if system:
            return PLAIN_WITH_SYSTEM.format(system=system, question=question)
        return PLAIN_NO_SYSTEM.format(question=question)
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates (Gemma) that refuse a system role raise many types
        if not system:
            raise
        merged = [{"role": "user", "content": f"{system}\n\n{question}"}]
        text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return str(text)


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt text; a chat-templated text already carries its BOS."""
    ids = list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
    bos = tokenizer.bos_token_id
    while bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def build(tokenizer: Any, question: str, system: str = "") -> Prompt:
    text = render(tokenizer, question, system)
    return Prompt(text=text, token_ids=tokenize(tokenizer, text))


def persona_system(description: str) -> str:
    return PERSONA_SYSTEM.format(description=description.strip())


# The simple-prompt baseline: one adjective phrase per pole.
SIMPLE_ADJECTIVES: dict[tuple[str, str], str] = {
    ("Openness", "high"): "open and curious",
    ("Openness", "low"): "conventional and closed-minded",
    ("Conscientiousness", "high"): "conscientious",
    ("Conscientiousness", "low"): "unconscientious and careless",
    ("Extraversion", "high"): "extraverted",
    ("Extraversion", "low"): "introverted",
    ("Agreeableness", "high"): "agreeable",
    ("Agreeableness", "low"): "disagreeable",
    ("Neuroticism", "high"): "neurotic",
    ("Neuroticism", "low"): "emotionally stable",
}
BASELINES = ("simple", "p2")


def simple_system(trait: str, pole: str) -> str:
    """The simple prompt: 'You are an introverted person.'"""
    adj = SIMPLE_ADJECTIVES[(trait, pole)]
    article = "an" if adj[0] in "aeiou" else "a"
    return f"You are {article} {adj} person."


def p2_system(description: str) -> str:
    """P2 (personality prompting): a full persona description of the pole as the system message."""
    return persona_system(description)
