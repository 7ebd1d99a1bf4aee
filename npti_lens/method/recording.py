"""Stage 4, on the model: hooks that add each forward's answer-position activations to `Stats`
(`recording`, while decoding or teacher forcing) and teacher forcing of answered prompts (`record_batch`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from npti_lens.method.stats import Stats, accumulate
from npti_lens.model.generation import generated_positions, positions_context
from npti_lens.model.load import model_device, pad_batch
from npti_lens.model.sites import MLPSites, hooks_added, mlp_sites, resid_site


@contextlib.contextmanager
def recording(model: TransformerBridge, stats: Stats, sites: MLPSites | None = None) -> Iterator[None]:
    """Hooks that add every layer's activations at answer positions to `stats` while active.

    Answer positions are those `generated_positions()` marks: the generated tokens inside
    `generate` (recording while decoding), or the answer mask `record_batch` declares (teacher
    forcing). Hooks are removed on exit. Record while decoding only with the KV cache: without
    it every forward re-runs all earlier positions, which would be counted again.
    """
    sites = sites or mlp_sites(model)
    # The answer positions as flat row indices, found once per forward: a boolean mask applied in
    # every layer would wait for the device (nonzero) once per layer.
    rows: dict[str, Any] = {"mask": None, "idx": None}

    def answer_rows(mask: Tensor) -> Tensor:
        if rows["mask"] is not mask:
            rows["mask"], rows["idx"] = mask, mask.flatten().nonzero().squeeze(-1)
        return rows["idx"]

    def make_hook(layer: int):  # noqa: ANN202 - closure over the layer
        act_fn = sites.act_fns[layer]

        def hook(pre: Tensor, hook: Any) -> None:
            mask = generated_positions()
            if mask is None:
                raise RuntimeError(
                    "recording: a forward ran without answer positions (see positions_context)"
                )
            idx = answer_rows(mask)
            if layer == 0:  # once per forward
                stats.n_tokens += int(idx.numel())
            accumulate(stats, layer, act_fn(pre.flatten(0, 1).index_select(0, idx)))

        return hook

    def resid_hook(layer: int):  # noqa: ANN202 - closure over the layer
        def hook(x: Tensor, hook: Any) -> None:
            idx = answer_rows(generated_positions())
            stats.resid_sum[layer] += x.flatten(0, 1).index_select(0, idx).sum(0, dtype=torch.float64)

        return hook

    def up_hook(layer: int):  # noqa: ANN202 - closure over the layer
        def hook(x: Tensor, hook: Any) -> None:
            idx = answer_rows(generated_positions())
            stats.up_sum[layer] += x.flatten(0, 1).index_select(0, idx).sum(0, dtype=torch.float64)

        return hook

    hooks = [(sites.pre(layer), make_hook(layer)) for layer in range(sites.n_layers)]
    if stats.resid_sum is not None:
        hooks += [(resid_site(layer), resid_hook(layer)) for layer in range(sites.n_layers)]
    if stats.up_sum is not None and sites.gated:
        hooks += [(sites.up(layer), up_hook(layer)) for layer in range(sites.n_layers)]
    with hooks_added(model, hooks):
        yield


@torch.inference_mode()
def record_batch(
    model: TransformerBridge,
    sequences: list[tuple[list[int], list[int]]],
    stats: Stats,
    sites: MLPSites | None = None,
) -> None:
    """Teacher-force prompt + answer sequences and add answer-position statistics to `stats`.

    `sequences` holds (prompt_ids, answer_ids) pairs; the answer mask covers the positions whose
    input token is an answer token. Right padding, so real tokens never see padding.
    """
    sites = sites or mlp_sites(model)
    device = model_device(model)
    ids, attn = pad_batch(model, [p + a for p, a in sequences], left=False)
    answer = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (p, a) in enumerate(sequences):
        answer[row, len(p) : len(p) + len(a)] = True
    answer = answer.to(device)
    with recording(model, stats, sites), positions_context(answer, any_set=True):
        # The base model (no LM head): logits are not needed for statistics.
        model.original_model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)
