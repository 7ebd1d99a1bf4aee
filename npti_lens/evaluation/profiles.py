"""Administer an inventory to a model: expected ratings from next-token probabilities, no sampling.

Each item is a rating question (how accurately the statement describes you, 1 = very inaccurate
... 5 = very accurate) through the model's chat template; by default the instruction and the scale
come first and the statement last (`layout="scale-first"`), so everything but the statement is a
prefix that all items of a respondent share and that runs once. One forward per item gives the next-token
probabilities; the probability of option d is the summed probability of the tokens that read `d`
(with or without a leading space). The item's rating is the expected rating over the five options,
renormalised, and the mass on them is reported: low mass means the model is not answering the
question. Every item is also given with the scale reversed (1 = very accurate ... 5 = very
inaccurate); the item score is the mean of the two orders.

Cronbach's alpha needs respondents who differ: as in the psychometrics-of-LLMs literature, they
are the same model answering under the persona prompt of search with different descriptions
(`respondents` of them, taken in turn from the 10 poles of a persona file), each administered the
whole inventory. Under an induction the
answer position (the last prompt token) counts as the generated position, so an induction with
its default `positions="generated"` acts where the answer is produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.core.constants import RATING_DIGITS, TRAITS
from npti_lens.core.errors import UserError
from npti_lens.inputs.inventory import Administration, InventoryResult, Item, keyed
from npti_lens.inputs.prompts import build, persona_system
from npti_lens.inputs.questions import SAMPLE_PERSONAS, draw_personas, load_personas
from npti_lens.model.generation import positions_context
from npti_lens.model.load import model_device, pad_batch
from npti_lens.model.sites import forward_module

OPTIONS = RATING_DIGITS
SCALE = (
    "very inaccurate",
    "moderately inaccurate",
    "neither accurate nor inaccurate",
    "moderately accurate",
    "very accurate",
)
LAYOUTS = {
    # the instruction and scale first: only the statement differs between a respondent's items
    "scale-first": """Here is a statement that may or may not describe you. How accurately does it describe you, as you generally are now?

{scale}

Reply with the number only.

Statement: "{statement}\"""",
    # the statement before the scale (the layout before 2026-12-02): ~4x the tokens per item
    "statement-first": """Here is a statement that may or may not describe you. How accurately does it describe you, as you generally are now?

Statement: "{statement}"

{scale}

Reply with the number only.""",
}
DEFAULT_LAYOUT = "scale-first"


@dataclass
class InventoryConfig:
    batch_size: int = field(default=32, metadata={"help": "items per forward"})
    respondents: int = field(
        default=20, metadata={"help": "persona-prompted administrations for Cronbach's alpha (0: no alpha)"}
    )
    personas: str | None = field(
        default=None,
        metadata={
            "help": "persona file of the alpha respondents and of --method p2; none: the shipped sample"
        },
    )
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples of the items"})
    boot_seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    layout: str = field(
        default=DEFAULT_LAYOUT,
        metadata={
            "help": "item prompt: scale-first (the statement last: a respondent's items share all "
            "else, which runs once) or statement-first"
        },
    )

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout: {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--n-boot", self.n_boot, 1),
                                   ("--respondents", self.respondents, 0)):  # fmt: skip
            if value < least:
                raise UserError(f"{flag}: {value} must be at least {least}")


def statement(item: Item) -> str:
    """'Worry about things' -> 'I worry about things.' (IPIP items omit the 'I')."""
    text = item.text.rstrip(".")
    if not text.startswith("I "):
        text = "I " + (text[0].lower() + text[1:] if not text[:2].isupper() else text)
    return text + "."


def item_prompt(item: Item, *, reversed_scale: bool = False, layout: str = DEFAULT_LAYOUT) -> str:
    labels = SCALE[::-1] if reversed_scale else SCALE
    scale = "\n".join(f"{d} = {label}" for d, label in zip(OPTIONS, labels, strict=True))
    return LAYOUTS[layout].format(statement=statement(item), scale=scale)


PROMPT_METHODS = ("simple", "p2")


@dataclass(frozen=True)
class PromptFrame:
    """A prompt baseline as an inventory condition: every item prompt is the question of the
    protocol's `stage` (simple: the pole's adjective phrase; p2: a description of the pole), as
    `npti baseline` asks its questions. One personality for all items, so they share a prefix."""

    protocol: Any  # npti_lens.method.protocol.Protocol
    stage: str
    personality: str

    def token_ids(self, tokenizer: Any, question: str) -> list[int]:
        return self.protocol.prompt(
            tokenizer, self.stage, personality=self.personality, question=question
        ).token_ids


def prompt_frame(
    method: str, trait: str, pole: str, protocol: Any, personas: str | Path | None, seed: int = 0
) -> PromptFrame:
    """The simple or p2 frame of a trait pole; p2's description is drawn from `personas` as the p2
    baseline draws its first question's (`bench.draw_personas`)."""
    if method not in PROMPT_METHODS:
        raise UserError(f"--method: {method!r} is not one of npti, vector, {', '.join(PROMPT_METHODS)}")
    protocol.stage(method)  # a protocol without the stage fails here, before any model work
    if method == "simple":
        return PromptFrame(protocol, method, protocol.adjective(trait, pole))
    descriptions = load_personas(personas or SAMPLE_PERSONAS, [trait])[(trait, pole)]
    return PromptFrame(protocol, method, draw_personas(descriptions, 1, seed=seed, trait=trait, pole=pole)[0])


def option_token_ids(tokenizer: Any) -> list[list[int]]:
    """Per option, the ids of the tokens that read as it (e.g. '4' and ' 4'); empty if none does."""
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [[i for i, t in enumerate(decoded) if t.strip() == label] for label in OPTIONS]


MIN_SHARED_PREFIX = 8  # tokens; below this, one forward per batch is as cheap as a cached prefix


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving each at least one token of its own."""
    n = min(map(len, prompts), default=1) - 1
    for p in prompts[1:]:
        n = next((k for k in range(n) if p[k] != prompts[0][k]), n)
    return max(n, 0)


@torch.inference_mode()
def option_probs(
    model: TransformerBridge,
    prompts: list[list[int]],
    option_ids: list[list[int]],
    batch_size: int = 32,
    *,
    reuse_prefix: bool = True,
) -> np.ndarray:
    """probs[prompt, option]: next-token probability of each option after each prompt.

    With `reuse_prefix`, the prefix all prompts share (a respondent's persona and, in the default
    layout, the whole item prompt up to the statement) runs once and its KV cache serves every
    batch (each suffix padded on the left, after the prefix). Batches are
    taken in order of length, so padding costs little; with no hook on the model (no induction)
    the forwards skip the bridge's module wrappers (`sites.plain_hf`). The tests hold every path
    equal to one plain forward per prompt.
    """
    hf = forward_module(model)
    device = model_device(model)
    out = np.zeros((len(prompts), len(option_ids)))
    n_shared = shared_prefix(prompts) if reuse_prefix and len(prompts) > 1 else 0
    cache = None
    if n_shared >= MIN_SHARED_PREFIX:
        prefix = torch.tensor([prompts[0][:n_shared]], dtype=torch.long, device=device)
        with positions_context(torch.zeros(prefix.shape, dtype=torch.bool, device=device), any_set=False):
            cache = hf(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(prompts), batch_size):
        rows = order[start : start + batch_size]
        batch = [prompts[i] for i in rows]
        if cache is not None:
            logits = _suffix_logits(hf, model, cache, [p[n_shared:] for p in batch], n_shared)
        else:
            ids, mask = pad_batch(model, batch, left=True)
            width = ids.shape[1]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            answer_pos = torch.zeros((len(batch), width), dtype=torch.bool, device=device)
            answer_pos[:, -1] = True
            with positions_context(answer_pos, any_set=True):
                full = hf(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
            logits = full.logits[:, -1]
        probs = torch.softmax(logits.float(), dim=-1)
        for j, tok_ids in enumerate(option_ids):
            if tok_ids:
                out[rows, j] = probs[:, tok_ids].sum(-1).cpu().numpy()
    return out


def _suffix_logits(
    hf: torch.nn.Module, model: TransformerBridge, cache: Any, suffixes: list[list[int]], n_shared: int
) -> Tensor:
    """Next-token logits after each suffix, continuing the shared prefix's KV cache (a copy per batch).

    The suffixes are padded on the left, between the prefix and their first token: the mask hides
    the pads from every real token, positions continue the prefix's, and every row ends in the last
    column, so the vocabulary projection runs for one position per row."""
    import copy

    device = model_device(model)
    ids, mask = pad_batch(model, suffixes, left=True)
    b, width = ids.shape
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(b)
    attn = torch.cat([torch.ones((b, n_shared), dtype=mask.dtype, device=device), mask], dim=1)
    pos = n_shared + (mask.cumsum(-1) - 1).clamp(min=0)
    answer_pos = torch.zeros((b, width), dtype=torch.bool, device=device)
    answer_pos[:, -1] = True
    with positions_context(answer_pos, any_set=True):
        logits = hf(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        ).logits
    return logits[:, -1]


def administer_once(
    model: TransformerBridge,
    items: list[Item],
    option_ids: list[list[int]],
    *,
    system: str = "",
    batch_size: int = 32,
    layout: str = DEFAULT_LAYOUT,
    frame: PromptFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(forward, reversed) option probabilities of every item, with an optional system message or
    prompt frame (not both).

    Each order is one call of `option_probs`, so each has its own shared prefix (in the default
    layout the two differ from the first line of the scale on)."""
    if frame is not None and system:
        raise ValueError("administer_once: a prompt frame or a system message, not both")

    def ids(text: str) -> list[int]:
        return (
            frame.token_ids(model.tokenizer, text)
            if frame
            else build(model.tokenizer, text, system).token_ids
        )

    return tuple(  # type: ignore[return-value]
        option_probs(
            model,
            [ids(item_prompt(it, reversed_scale=rev, layout=layout)) for it in items],
            option_ids,
            batch_size,
        )
        for rev in (False, True)
    )


def respondent_descriptions(path: str | Path | None, n: int) -> list[str]:
    """n persona descriptions, taken in turn from the 10 poles (high and low of every trait)."""
    if n <= 0:
        return []
    personas = load_personas(path or SAMPLE_PERSONAS)
    poles = [personas[(t, p)] for t in TRAITS for p in ("high", "low")]
    depth = max(len(v) for v in poles)
    order = [v[i] for i in range(depth) for v in poles if i < len(v)]
    if n > len(order):
        raise UserError(f"--respondents: {n} asked, the persona file has {len(order)} descriptions")
    return order[:n]


def administer(
    model: TransformerBridge,
    items: list[Item],
    cfg: InventoryConfig,
    condition: str = "none",
    *,
    frame: PromptFrame | None = None,
    progress: bool = False,
) -> Administration:
    """The inventory given to the model as it is (plus persona respondents for alpha).

    Under a prompt `frame` there are no respondents (alpha is NaN): they are themselves a persona
    prompt and would compete with the frame's."""
    from tqdm.auto import tqdm

    option_ids = option_token_ids(model.tokenizer)
    fwd, rev = administer_once(
        model, items, option_ids, batch_size=cfg.batch_size, layout=cfg.layout, frame=frame
    )
    resp = None
    descriptions = [] if frame else respondent_descriptions(cfg.personas, cfg.respondents)
    if descriptions:
        rows = []
        for d in tqdm(descriptions, desc=f"respondents ({condition})", unit="persona", disable=not progress):
            f, r = administer_once(
                model,
                items,
                option_ids,
                system=persona_system(d),
                batch_size=cfg.batch_size,
                layout=cfg.layout,
            )
            rows.append(keyed(Administration("", f, r).scores()["score"], items))
        resp = np.stack(rows)
    return Administration(condition, fwd, rev, resp)


def measure(
    model: TransformerBridge,
    items: list[Item],
    cfg: InventoryConfig,
    inductions: dict[str, Any] | None = None,
    *,
    frames: dict[str, PromptFrame] | None = None,
    progress: bool = False,
) -> InventoryResult:
    """The profile of the model as it is, under each induction and under each prompt frame.

    `inductions` maps a condition name to a zero-argument callable returning a context manager that
    induces (e.g. `lambda: induce(model, pairs, InduceConfig(gamma=2))`); `frames` maps a condition
    name to a `PromptFrame` (e.g. `prompt_frame("p2", "Extraversion", "high", protocol, None)`).
    """
    cfg.check()
    adms = [administer(model, items, cfg, progress=progress)]
    for name, make in (inductions or {}).items():
        with make():
            adms.append(administer(model, items, cfg, condition=name, progress=progress))
    for name, frame in (frames or {}).items():
        adms.append(administer(model, items, cfg, condition=name, frame=frame, progress=progress))
    prompts = {name: {"stage": f.stage, "personality": f.personality} for name, f in (frames or {}).items()}
    return InventoryResult(items, adms, cfg, prompts)
