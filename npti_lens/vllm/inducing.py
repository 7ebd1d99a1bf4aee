"""The induction half of NPTI's vLLM worker extension: the inductions a worker holds (registered by
the driver or loaded from a NEURONS folder), their per-rank plans built once per configuration
outside any forward, and the edit itself at the rows the forward under way gives it.

The edit is the one of `npti_lens.method.induction` (same plan, same `shifted`, keep draws hashed
from (seed, position, layer, neuron) with `counter_uniform`), on this rank's slice of the neurons.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.method.induction import InduceConfig, counter_uniform, plan_layers, shifted
from npti_lens.method.neurons import NeuronSet
from npti_lens.vllm.args import RankPlan, neurons_from, rank_plan
from npti_lens.vllm.recording import Site

MAX_PLANS = 64  # induction configurations whose plans stay on the device (least recently used go)


@dataclass
class _Plans:
    pairs: list[tuple[NeuronSet, NeuronSet | None]]
    by_cfg: OrderedDict[tuple, dict[int, RankPlan]] = field(default_factory=OrderedDict)


class Inducing:
    """Mixed into `npti_lens.vllm.worker.NPTIWorkerExtension`: its `_npti` state holds the inductions."""

    _npti: dict[str, Any]
    model_runner: Any

    def npti_prepare(self, key: str, cfg: dict[str, Any]) -> None:
        """Build (and cache) the plans of induction `key` under `cfg` now, outside any forward."""
        self._npti_plans(self._npti["inductions"][key], InduceConfig(**cfg))

    def npti_register(self, key: str, pairs: list[tuple[dict, dict | None]]) -> None:
        """Register an induction: (target set, opposite set or None) pairs as plain dicts."""
        self._npti["inductions"][key] = _Plans(
            [(neurons_from(t), None if o is None else neurons_from(o)) for t, o in pairs]
        )

    def npti_load(self, name: str, folder: str) -> list[str]:
        """Register every trait pole of a NEURONS folder as `name/Trait/pole`; returns the keys."""
        from npti_lens.core.constants import pole_name
        from npti_lens.method.induction import load_pair

        keys = []
        for trait in TRAITS:
            for pole in POLES:
                if not (Path(folder) / pole_name(trait, pole)).is_dir():
                    continue
                tgt, opp = load_pair(folder, trait, pole)
                self._npti["inductions"][f"{name}/{trait}/{pole}"] = _Plans([(tgt, opp)])
                keys.append(f"{name}/{trait}/{pole}")
        self._npti.setdefault("default_neurons", name)  # the first folder: requests may omit npti_neurons
        return keys

    def npti_keys(self) -> list[str]:
        return sorted(self._npti["inductions"])

    def _npti_plans(self, plans: _Plans, cfg: InduceConfig) -> dict[int, RankPlan]:
        ckey = tuple(getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("seed", "positions"))
        if ckey in plans.by_cfg:
            plans.by_cfg.move_to_end(ckey)
        else:
            s = self._npti
            device = next(self.model_runner.model.parameters()).device
            dtype = self.model_runner.model_config.dtype
            full = plan_layers(s["n_layers"], s["d_mlp"], plans.pairs, cfg, "cpu", dtype)
            d_local = s["d_mlp"] // s["tp"]
            plans.by_cfg[ckey] = {
                layer: rank_plan(p, s["rank"], d_local, device) for layer, p in full.items()
            }
            while len(plans.by_cfg) > MAX_PLANS:
                plans.by_cfg.popitem(last=False)
        return plans.by_cfg[ckey]

    def _npti_edit(
        self,
        site: Site,
        plan: RankPlan,
        cfg: InduceConfig,
        rows: Tensor,
        positions: Tensor,
        x: Tensor,
        out: Tensor,
    ) -> None:
        full, cols, at = plan.full, plan.cols, rows[:, None]  # gathers of just the plan's cells
        if site.gated:
            a, up = site.gate(x[at, cols]), x[at, plan.up_cols]
        else:
            a, up = out[at, cols], None
        keep = full.is_target
        if cfg.keep == "bernoulli" and cfg.keep_prob < 1.0:
            keep = keep & (counter_uniform(cfg.seed, positions, site.layer, full.idx) <= cfg.keep_prob)
        elif cfg.keep == "exact" and full.n_keep < full.n_target:
            u = counter_uniform(cfg.seed, positions, site.layer, full.idx).masked_fill(~full.is_target, 2.0)
            keep = torch.zeros_like(u, dtype=torch.bool)
            keep.scatter_(1, u.argsort(-1)[:, : full.n_keep], True)
        if plan.mine is not None:  # another rank holds some of the layer's neurons
            keep = keep.index_select(-1, plan.mine)
        new = shifted(a.to(full.delta.dtype), plan.part, keep, cfg.clamp_order)
        new = (new * up if up is not None else new).to(out.dtype)
        bad = ~torch.isfinite(new).all()
        flag = self._npti["nonfinite"]
        self._npti["nonfinite"] = bad if flag is None else flag | bad
        out[at, cols] = new  # one scatter in place (rows and columns are distinct)
