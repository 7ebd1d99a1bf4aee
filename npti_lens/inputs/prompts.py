"""Prompts: chat templates, the plain-text layout, BOS handling; the protocol's templates render here.

The exact text given to the model is kept (it goes into every output line as `prompt`) and is
tokenized without adding special tokens when a chat template already wrote them, so no prompt ever
starts with two BOS tokens. Which templates a stage uses is the protocol's business
(`npti_lens.method.protocol`); this module only turns (system, user) into the model's text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
_MERGED: set[str] = set()  # tokenizers already logged as refusing a system message

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
    except Exception as exc:  # noqa: BLE001 - templates (Gemma) that refuse a system role raise many types
        if not system:
            raise
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        if name not in _MERGED:  # once per tokenizer: it happens for every prompt
            _MERGED.add(name)
            logger.info("%s: its chat template refuses a system message (%s: %s); the system text "
                        "goes in front of the user's", name, type(exc).__name__, exc)  # fmt: skip
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


UNKNOWN_WARN_SHARE = 0.05  # above this share of unknown tokens the model cannot read the prompts


def unknown_share(tokenizer: Any, prompts: list[list[int]]) -> tuple[float, int]:
    """Share of the tokenizer's unknown token over all `prompts`, and the index of the worst prompt."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not prompts:
        return 0.0, 0
    counts = [sum(1 for t in p if t == unk) for p in prompts]
    total = sum(len(p) for p in prompts)
    worst = max(range(len(prompts)), key=lambda i: counts[i] / max(len(prompts[i]), 1))
    return sum(counts) / max(total, 1), worst


def warn_unknown(tokenizer: Any, prompts: list[list[int]], sources: list[str] | None = None) -> None:
    """Warn (warnings.warn) when more than 5% of the prompts' tokens are the unknown token."""
    share, worst = unknown_share(tokenizer, prompts)
    if share > UNKNOWN_WARN_SHARE:
        import warnings

        where = f" (most in {sources[worst]})" if sources else ""
        warnings.warn(
            f"{share:.0%} of the prompt tokens are {tokenizer.unk_token} to this model's vocabulary{where}: "
            "it cannot read these prompts; for --model organism use its own data (npti organism data) "
            "and protocol",
            UnknownTokenWarning,
            stacklevel=2,
        )


class UnknownTokenWarning(UserWarning):
    """Many prompt tokens are the unknown token: the model cannot read the prompts."""
