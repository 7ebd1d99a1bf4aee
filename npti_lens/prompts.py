"""Prompts: chat templates, the plain-text layout, BOS handling; the protocol's templates render here.

The exact text given to the model is kept (it goes into every output line as `prompt`) and is
tokenized without adding special tokens when a chat template already wrote them, so no prompt ever
starts with two BOS tokens. Which templates a stage uses is the protocol's business
(`npti_lens.protocol`); this module only turns (system, user) into the model's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# npti_lens 0.1's persona prompt (the `lens` and `organism` protocols' search stage, the organism's
# training prompt, and the inventory's respondents).
PERSONA_SYSTEM = "{description} Answer the question below as this person would, in your own words."
# Plain-text layout for models without a chat template (the `lens` protocol's).
PLAIN_WITH_SYSTEM = "{system}\n\nQuestion: {user}\nAnswer:"
PLAIN_NO_SYSTEM = "Question: {user}\nAnswer:"


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: list[int]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(
    tokenizer: Any,
    user: str,
    system: str = "",
    *,
    plain: tuple[str, str] = (PLAIN_WITH_SYSTEM, PLAIN_NO_SYSTEM),
) -> str:
    """The model's text for one user message and an optional system message.

    With a chat template: the template with the generation prompt. A template that refuses a
    system role (Gemma) gets the system text in front of the user's. Without one: `plain`
    (with-system, without-system layouts filling {system} and {user}).
    """
    if not has_chat_template(tokenizer):
        return plain[0].format(system=system, user=user) if system else plain[1].format(user=user)
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates (Gemma) that refuse a system role raise many types
        if not system:
            raise
        merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
        text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return str(text)


def render(tokenizer: Any, question: str, system: str = "") -> str:
    """npti_lens 0.1's layout: the question as the user message, an optional system message."""
    return render_messages(tokenizer, question, system)


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
