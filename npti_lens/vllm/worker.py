"""The vLLM side of the engine seam: NPTI's edit and answer-token statistics inside vLLM's workers.

`NPTIWorkerExtension` is mixed into every vLLM worker (`LLM(worker_extension_cls=...)`); the driver
(`npti_lens.vllm.engine`) calls its methods with `collective_rpc`. Each layer's MLP activation
(`mlp.act_fn`: SiluAndMul or GeluAndMul, input gate|up, output act(gate) * up; GPT-2's `mlp.act`)
ends in NPTI's op (`npti_lens.vllm.ops`, which survives compilation; an eager forward hook where a
model's activation carries none), which calls `_npti_on_act`; once per forward the worker reads
from the model runner which rows of the flattened batch belong to which request and at which
position. Each request says in `SamplingParams.extra_args` what to do with it:

- an induction: `npti_induction` (a registered key) or `npti_trait` + `npti_pole` (+ `npti_neurons`,
  the name of a loaded neuron folder), and `npti_gamma`, optionally `npti_keep_prob`, `npti_keep`,
  `npti_clamp_order`, `npti_clamp_layers`, `npti_positions`, `npti_seed`; the edit is the one of
  `npti_lens.method.induction` (same plan, same `shifted`), at rows whose position holds a generated token;
- a recording: `npti_record` (a bucket name) and `npti_record_from` (the first answer position of a
  teacher-forced prompt + answer): rows at or after it add to the bucket's statistics, each position
  once (a recomputed prefill is not counted twice).

Keep draws hash (seed, position, layer, neuron) (`counter_uniform`), so a request's answer does not
depend on what else shares its batch. Under tensor parallelism each rank edits and records only its
own contiguous slice of the neurons (the column-split gate_up).

On a GPU the hooks never make the host wait: row indices cross once per step from pinned memory,
plans are index tensors built once per configuration (by the driver, outside the forward), the
histogram is a scatter-add, the non-finite check a device flag read after a batch. Each forward
that edits or records checks that every layer's activation reached the edit exactly once.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from npti_lens.method.induction import (
    InduceConfig,
)
from npti_lens.vllm import ops
from npti_lens.vllm.args import (
    PREFIX,
    RankPlan,
    induce_config,
    induction_args,
    induction_key,
)
from npti_lens.vllm.inducing import Inducing
from npti_lens.vllm.recording import Recording, Site

# every activation vLLM builds in this process carries NPTI's op (see npti_lens.vllm.ops); without
# vLLM the hot path is still importable for its tests
with contextlib.suppress(ImportError):
    ops.install()

# How each gated activation vLLM implements acts on the gate half (the module's own settings).
GATES = {
    "SiluAndMul": lambda m: torch.nn.functional.silu,
    "GeluAndMul": lambda m: lambda g: torch.nn.functional.gelu(g, approximate=m.approximate),
}


@dataclass
class _Step:
    """Who owns which row in the forward under way."""

    edits: list[tuple[Tensor, Tensor, InduceConfig, dict[int, RankPlan]]]  # rows, positions, cfg, plans
    records: list[tuple[str, Tensor]]  # (bucket, rows)


class NPTIWorkerExtension(Inducing, Recording):
    """Methods every vLLM worker gains; the driver calls them by name with `collective_rpc`."""

    def npti_setup(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hook the model (once): returns its dimensions as this rank sees them."""
        if getattr(self, "_npti", None) is not None:
            return self._npti_dims()
        from vllm.distributed import get_tensor_model_parallel_rank

        missing = [
            a for a in ("input_batch", "query_start_loc", "requests") if not hasattr(self.model_runner, a)
        ]
        if missing:
            raise RuntimeError(
                f"npti: vLLM's model runner {type(self.model_runner).__name__} lacks {', '.join(missing)}; "
                "npti_lens reads the V1 runner of vLLM 0.32: set VLLM_USE_V2_MODEL_RUNNER=0"
            )
        from npti_lens.vllm.check import config_refusal

        why = config_refusal(self.vllm_config)
        if why:
            raise RuntimeError(f"npti: {why}")
        model = self.model_runner.model
        from vllm.config import CompilationMode, CUDAGraphMode

        comp = self.vllm_config.compilation_config
        compiled = comp.mode != CompilationMode.NONE or comp.cudagraph_mode != CUDAGraphMode.NONE
        acts: dict[int, torch.nn.Module] = {}  # every layer's activation (GPT-2 shares one module)
        blocks: dict[int, torch.nn.Module] = {}
        rank = get_tensor_model_parallel_rank()
        for name, module in model.named_modules(remove_duplicate=False):
            m = re.search(r"(?:layers|\.h)\.(\d+)\.mlp\.(act_fn|act)$", name)
            if m:
                acts[int(m.group(1))] = module
            b = re.search(r"(?:layers|\.h)\.(\d+)$", name)
            if b:
                blocks[int(b.group(1))] = module
        if not acts:
            raise RuntimeError(f"npti: no MLP activation module found in {type(model).__name__}")
        if sorted(acts) != list(range(len(acts))):
            raise RuntimeError(f"npti: MLP activations found for layers {sorted(acts)[:8]}..., not 0..n-1")
        kinds = sorted({ops.base_name(m) for m in acts.values()})
        kind = kinds[0]
        gated = "AndMul" in kind or kind.startswith("MulAnd")  # GeluAndMulSparse too
        if len(kinds) > 1 or (gated and kind not in GATES):
            raise RuntimeError(
                f"npti: the MLP activations are {', '.join(kinds)}; the edit and statistics implement one "
                f"of the gated activations {', '.join(GATES)} or an elementwise one"
            )
        cfg = self.model_runner.model_config.hf_config
        d_mlp = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * cfg.n_embd)
        tp = d_mlp // self._npti_local_width(model)
        gate = GATES[kind](acts[0]) if gated else None
        self._npti = {
            "base": InduceConfig(**(base or {})),
            "n_layers": len(acts),
            "d_mlp": d_mlp,
            "tp": tp,
            "rank": rank,
            "compiled": compiled,
            "sites": [Site(layer, gated, d_mlp // tp, gate) for layer in range(len(acts))],
            "inductions": {},
            "stats": {},
            "recorded_upto": {},
            "requests": {},  # req_id -> parsed npti arguments
            "nonfinite": None,  # a device flag: no sync per layer
            "step": None,
            "calls": 0,  # activations run in the forward under way (the n-th is layer n)
            "counted": {},  # bucket -> tokens counted since the last take
            "handles": [],
        }
        for module in {id(m): m for m in acts.values()}.values():
            if ops.claim(module, self._npti_on_act):
                continue  # the op in its forward calls us, compiled or not
            if compiled:
                raise RuntimeError(
                    f"npti: the MLP activation {type(module).__name__} carries no npti op, so compiled code "
                    "would skip the edit; run vLLM eagerly (drop --compile)"
                )
            hook = module.register_forward_hook(lambda m, i, o: self._npti_on_act(i[0], o))
            self._npti["handles"].append(hook)
        for layer, module in blocks.items():  # residual sums (search only; eager: checked per step)
            self._npti["handles"].append(module.register_forward_hook(self._npti_block_hook(layer)))
        self._npti["handles"].append(model.register_forward_pre_hook(self._npti_pre_hook, with_kwargs=True))
        self._npti["handles"].append(model.register_forward_hook(self._npti_post_hook))
        self._npti["gated"] = gated
        return self._npti_dims()

    def _npti_local_width(self, model: torch.nn.Module) -> int:
        # The rank's neuron count: the down projection's input width (GPT-2: c_proj).
        for name, module in model.named_modules():
            if re.search(r"(?:layers|\.h)\.0\.mlp\.(down_proj|c_proj)$", name):
                w = getattr(module, "input_size_per_partition", None)
                if w:
                    return int(w)
        raise RuntimeError("npti: cannot find layer 0's MLP down projection")

    def _npti_dims(self) -> dict[str, Any]:
        return {k: self._npti[k] for k in ("n_layers", "d_mlp", "tp", "rank", "gated")}

    # ----- what the driver registers and takes back ----------------------------------------------

    def npti_strict(self, on: bool) -> None:
        """A check for GPUs: while on, any device-to-host sync inside the per-layer edit and
        recording raises (`torch.cuda.set_sync_debug_mode("error")` around them)."""
        self._npti["strict"] = bool(on)

    def npti_take_nonfinite(self) -> bool:
        flag = self._npti["nonfinite"]
        self._npti["nonfinite"] = None
        return flag is not None and bool(flag)

    # ----- per forward ---------------------------------------------------------------------------

    def _npti_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        self._npti["step"] = None if positions is None else self._npti_step(positions)
        self._npti["calls"] = 0

    def _npti_post_hook(self, module: torch.nn.Module, args: tuple, out: Any) -> None:
        """A forward that should have edited or recorded: every layer's activation reached us once,
        or fail loudly."""
        s = self._npti
        if s["step"] is None or s["calls"] == s["n_layers"]:
            return
        raise RuntimeError(
            f"npti: the MLP activations reached the edit {s['calls']} times in this forward, not once for "
            f"each of {s['n_layers']} layers, so edits or statistics would silently be missing or misplaced "
            "(CUDA graphs that capture the whole model, or a fused activation kernel?); run vLLM eagerly "
            "on a bf16/fp16 checkpoint"
        )

    def _npti_step(self, positions: Tensor) -> _Step | None:
        runner = self.model_runner
        batch = runner.input_batch
        n_reqs = batch.num_reqs
        starts = runner.query_start_loc.cpu[: n_reqs + 1].tolist()
        edits: dict[tuple, tuple[list[int], list[int]]] = {}  # rows and their positions
        records: dict[str, list[int]] = {}
        owners: dict[tuple, tuple[InduceConfig, dict[int, RankPlan]]] = {}
        for r, req_id in enumerate(batch.req_ids[:n_reqs]):
            ask = self._npti_request(req_id)
            if ask is None:
                continue
            args, key, cfg = ask
            lo, hi = starts[r], starts[r + 1]
            if hi == lo:
                continue
            # rows lo..hi hold positions first, first + 1, ... (read on the host: no device sync)
            first = int(batch.num_computed_tokens_cpu[r])
            if positions.device.type == "cpu" and int(positions[lo]) != first:
                raise RuntimeError(f"npti: row {lo} is at position {int(positions[lo])}, not {first}")
            if "npti_record" in args:
                bucket = str(args["npti_record"])
                upto = self._npti["recorded_upto"].get((bucket, req_id), int(args.get("npti_record_from", 0)))
                begin = max(upto, first)
                if begin < first + (hi - lo):
                    records.setdefault(bucket, []).extend(range(lo + begin - first, hi))
                    self._npti["recorded_upto"][(bucket, req_id)] = first + (hi - lo)
            if key is None:
                continue
            cfg_key = (key, *(getattr(cfg, f.name) for f in fields(cfg)))
            if cfg_key not in owners:
                owners[cfg_key] = (cfg, self._npti_plans(self._npti["inductions"][key], cfg))
            n_prompt = int(batch.num_prompt_tokens[r])
            begin = lo if cfg.positions == "all" else lo + max(0, n_prompt - first)
            rows_, pos_ = edits.setdefault(cfg_key, ([], []))
            rows_.extend(range(begin, hi))
            pos_.extend(range(first + begin - lo, first + hi - lo))
        if not edits and not records:
            return None
        if records and self._npti["compiled"]:
            raise RuntimeError(
                "npti: search statistics need eager vLLM (the residual sums are Python hooks that compiled "
                "code skips); record with an engine made without compile"
            )
        device = positions.device

        def rows(idx: list[int]) -> Tensor:
            host = torch.tensor(idx, dtype=torch.long)
            if device.type != "cuda":
                return host.to(device)
            return host.pin_memory().to(device, non_blocking=True)  # no wait for the device

        return _Step(
            edits=[(rows(idx), rows(pos), *owners[k]) for k, (idx, pos) in edits.items() if idx],
            records=[(b, rows(idx)) for b, idx in records.items()],
        )

    def _npti_request(self, req_id: str) -> tuple[dict[str, Any], str | None, InduceConfig] | None:
        """A request's npti arguments, induction key and config (parsed once per request), or None."""
        cache = self._npti["requests"]
        if req_id not in cache:
            if len(cache) > 4096:  # finished requests: forget them
                cache.clear()
            state = self.model_runner.requests.get(req_id)
            extra = getattr(getattr(state, "sampling_params", None), "extra_args", None)
            if not extra or not any(k.startswith(PREFIX) for k in extra):
                cache[req_id] = None
            else:
                args = induction_args(extra)
                key = induction_key(args, self._npti.get("default_neurons"))
                if key is not None and key not in self._npti["inductions"]:
                    raise RuntimeError(
                        f"npti: no induction {key!r} is loaded (loaded: {', '.join(self.npti_keys())})"
                    )
                cache[req_id] = (args, key, induce_config(args, self._npti["base"]))
        return cache[req_id]

    def _npti_on_act(self, x: Tensor, out: Tensor) -> None:
        """An MLP activation ran (the op in its forward, or an eager hook): x is its input, `out`
        its output, edited in place. Layers run in order, so the n-th call of a forward is layer n."""
        s = self._npti
        layer = s["calls"]
        s["calls"] = layer + 1
        step = s["step"]
        if step is None or layer >= s["n_layers"]:
            return
        if s.get("strict") and out.is_cuda:  # npti_strict: a host sync in here is an error
            torch.cuda.set_sync_debug_mode("error")
            try:
                return self._npti_layer(step, s["sites"][layer], x, out)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self._npti_layer(step, s["sites"][layer], x, out)

    def _npti_layer(self, step: _Step, site: Site, x: Tensor, out: Tensor) -> None:
        layer = site.layer
        for bucket, rows in step.records:
            self._npti_record(bucket, site, rows, x, out)
        for rows, positions, cfg, plans in step.edits:
            plan = plans.get(layer)
            if plan is None or plan.cols.numel() == 0:
                continue
            self._npti_edit(site, plan, cfg, rows, positions, x, out)
