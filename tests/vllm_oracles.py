"""Oracles the vLLM tests share: the TransformerLens loop's answers and a full activation cache."""

from __future__ import annotations

import torch

from npti_lens.method.stats import Stats, bin_lower_edges


def answer_acts(tl, pairs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """Per layer, every answer token's neuron activations (tokens x d_mlp), from a full forward each."""
    from npti_lens.model.sites import mlp_sites

    sites = mlp_sites(tl)
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(sites.n_layers)]
    with torch.inference_mode():
        for p, a in pairs:
            if not a:
                continue
            _, cache = tl.run_with_cache(torch.tensor([p + a]))
            for layer in range(sites.n_layers):
                pre = cache[sites.pre(layer)][0, len(p) :]
                per_layer[layer].append(sites.act_fns[layer](pre).float())
    return [torch.cat(x) for x in per_layer]


def explain_differences(ref: Stats, other: Stats, acts: list[torch.Tensor], tol: float = 1e-4) -> int:
    """How many answer-token activations fell into another bin in `other` than in `ref`, checking
    that each is bin-edge rounding: moved between neighbouring bins only, and for every neuron no
    more moves across an edge than the reference has activations within `tol` of that edge."""
    assert ref.n_tokens == other.n_tokens
    diff = other.hist - ref.hist
    assert int(diff.sum()) == 0
    edges = bin_lower_edges()  # edge between bins k and k+1 is the lower edge of bin k+1
    moved = 0
    for layer, neuron in (diff != 0).any(-1).nonzero().tolist():
        d = diff[layer, neuron].clone()
        near = acts[layer][:, neuron].double()
        # walk the bins: the running sum is what crossed the edge above each bin
        crossed = d.cumsum(0)[:-1]
        for k in crossed.nonzero().squeeze(-1).tolist():
            n = abs(int(crossed[k]))
            edge = float(edges[k + 1])
            close = int(((near - edge).abs() <= tol).sum())
            assert n <= close, (
                f"layer {layer} neuron {neuron}: {n} values crossed edge {edge} but the reference has "
                f"{close} within {tol} of it"
            )
            moved += n
    return moved
