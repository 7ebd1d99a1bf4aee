"""Stage 3: batched generation with a KV cache, left padding, greedy or sampled decoding.

The decode loop calls the HF model that the TransformerBridge wraps (its modules are the bridge's,
so every TransformerLens hook fires) and keeps its own `DynamicCache`. While a forward runs, the loop
publishes which of its positions hold generated tokens (`generated_positions()`), so an
intervention can leave the prompt alone, as the published method does.

Known hazard: TransformerLens 4.3 with transformers 5.24 drops the KV cache (the decoder layers pass
it as `cache=`, which the bridge's attention does not read), so every new token attends only to
itself. The project pins transformers < 5.24, and the loop checks after the prefill that the cache
really holds the prompt, so a future mismatch fails loudly instead of generating wrong text.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

from npti_lens.core.errors import UserError
from npti_lens.model.load import Model, eos_token_ids, model_device, n_positions, pad_batch
from npti_lens.model.sites import forward_module

log = logging.getLogger(__name__)

# (mask, whether any position is set): the flag spares hooks a device sync on every forward.
_GENERATED: contextvars.ContextVar[tuple[Tensor, bool] | None] = contextvars.ContextVar(
    "npti_generated_positions", default=None
)


def generated_positions() -> Bool[Tensor, "batch pos"] | None:
    """Mask of the positions in the forward under way whose input token was generated (None outside)."""
    state = _GENERATED.get()
    return None if state is None else state[0]


def any_generated() -> bool:
    """False when the forward under way holds no generated position (the prefill), else True."""
    state = _GENERATED.get()
    return state is not None and state[1]


@contextlib.contextmanager
def positions_context(mask: Bool[Tensor, "batch pos"], any_set: bool | None = None) -> Iterator[None]:
    """Declare which positions of the next forwards hold generated tokens (for teacher forcing too).

    `any_set` says whether any position is set, if the caller knows without looking at the mask.
    """
    token = _GENERATED.set((mask, bool(mask.any()) if any_set is None else any_set))
    try:
        yield
    finally:
        _GENERATED.reset(token)


@dataclass
class GenerateConfig:
    max_new_tokens: int = field(default=128, metadata={"help": "tokens to generate per answer"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward"})
    temperature: float = field(
        default=0.0, metadata={"help": "sampling temperature; 0 means greedy decoding"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with temperature)"})
    repetition_penalty: float = field(
        default=1.15,
        metadata={
            "help": "HF-style repetition penalty (the released code: 1.1 in search, 1.15 when inducing)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of sampling and of random masks"})
    ignore_eos: bool = field(
        default=False, metadata={"help": "keep generating past EOS (fixed-length runs, benchmarks)"}
    )
    use_cache: bool = field(
        default=True, metadata={"help": "decode with a KV cache (off: recompute the whole sequence)"}
    )


def check_context(
    model: Model, prompts: list[list[int]], max_new_tokens: int, sources: list[str] | None = None
) -> None:
    """Refuse, before generating, a prompt that with `max_new_tokens` outgrows the model's positions."""
    if max_new_tokens < 1:
        raise UserError(f"{max_new_tokens} is not 1 or more", field="max_new_tokens")
    limit = n_positions(model)
    if limit is None or not prompts:
        return
    i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
    if len(prompts[i]) + max_new_tokens > limit:
        where = sources[i] if sources else f"prompt {i}"
        raise UserError(
            f"{where}: its prompt of {len(prompts[i])} tokens plus --max-new-tokens {max_new_tokens} "
            f"exceeds the model's {limit} positions; shorten the question or lower --max-new-tokens"
        )


@dataclass
class Generation:
    prompt_ids: list[int]
    answer_ids: list[int]  # generated tokens, EOS excluded
    text: str
    hit_eos: bool


def _choose(logits: Tensor, presence: Tensor, cfg: GenerateConfig, gen: torch.Generator | None) -> Tensor:
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        penalised = torch.where(logits < 0, logits * cfg.repetition_penalty, logits / cfg.repetition_penalty)
        logits = torch.where(presence, penalised, logits)
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def _generate_batch(
    model: TransformerBridge, prompts: list[list[int]], cfg: GenerateConfig, seed: int
) -> list[Generation]:
    hf = forward_module(model)  # no hook on the model: the HF model without the bridge's wrappers
    tok = model.tokenizer
    device = model_device(model)
    pad = int(tok.pad_token_id)
    ids, mask = pad_batch(model, prompts, left=True)
    n, width = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    vocab = int(hf.get_output_embeddings().weight.shape[0])
    presence = torch.zeros((n, vocab), dtype=torch.bool, device=device)
    presence.scatter_(1, ids.masked_fill(mask == 0, 0), mask.bool())
    eos = torch.tensor(eos_token_ids(model), device=device)
    gen = None
    if cfg.temperature > 0:
        gen = torch.Generator(device=device).manual_seed(seed)

    cache = DynamicCache(config=hf.config) if cfg.use_cache else None

    def forward(step_ids: Tensor, step_pos: Tensor, is_gen: Tensor, any_gen: bool) -> Tensor:
        """Next-token logits; `is_gen` marks the positions holding generated tokens."""
        with positions_context(is_gen, any_set=any_gen):
            return hf(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=cache,
                use_cache=cfg.use_cache,
                logits_to_keep=1,
            ).logits[:, -1, :]

    prompt_part = torch.zeros((n, width), dtype=torch.bool, device=device)
    logits = forward(ids, pos, prompt_part, False)
    if cache is not None and cache.get_seq_length() != width:
        raise RuntimeError(
            f"KV cache holds {cache.get_seq_length()} positions after a {width}-token prefill: this "
            "transformers release is not compatible with TransformerLens's cache handling "
            "(install transformers<5.24, or generate with use_cache=False)"
        )
    new = torch.empty((n, 0), dtype=torch.long, device=device)
    # valid[:, t]: new token t is part of the answer (not EOS, not padding after it).
    valid = torch.empty((n, 0), dtype=torch.bool, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # checked once per batch, not per step
    for step in range(cfg.max_new_tokens):
        nonfinite |= ~torch.isfinite(logits).all()
        nxt = _choose(logits, presence, cfg, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new = torch.cat([new, nxt[:, None]], dim=1)
        presence[torch.arange(n, device=device), nxt] |= ~done
        if not cfg.ignore_eos:
            done |= torch.isin(nxt, eos)
        valid = torch.cat([valid, ~done[:, None]], dim=1)
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
        if cache is not None:
            logits = forward(nxt[:, None], pos[:, -1:], valid[:, -1:], True)
        else:
            logits = forward(torch.cat([ids, new], dim=1), pos, torch.cat([prompt_part, valid], dim=1), True)

    if bool(nonfinite):
        raise UserError(
            "the model's next-token scores became infinite or NaN while generating (under an induction: "
            "lower --gamma; else try --dtype float32)"
        )
    eos_set = set(eos.tolist())
    results = []
    for row, p in enumerate(prompts):
        answer: list[int] = []
        hit = False
        for t in new[row].tolist():
            if t in eos_set and not cfg.ignore_eos:
                hit = True
                break
            answer.append(t)
        text = tok.decode(answer, skip_special_tokens=True).strip()
        results.append(Generation(prompt_ids=list(p), answer_ids=answer, text=text, hit_eos=hit))
    return results


def generate(
    model: TransformerBridge,
    prompts: list[list[int]],
    cfg: GenerateConfig | None = None,
    *,
    progress: bool = False,
) -> list[Generation]:
    """Generate an answer for every prompt (token ids), in batches of similar length.

    Batches are formed from the prompts sorted by length (stable), so a prompt's batch, and hence
    its output, depends only on the prompt list and the batch size. Results keep the input order.
    """
    cfg = cfg or GenerateConfig()
    check_context(model, prompts, cfg.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    starts = range(0, len(order), cfg.batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
        idx = order[start : start + cfg.batch_size]
        batch = _generate_batch(model, [prompts[i] for i in idx], cfg, seed=cfg.seed + start)
        for i, g in zip(idx, batch, strict=True):
            results[i] = g
    return [r for r in results if r is not None]
