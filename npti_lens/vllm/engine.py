"""The engine seam's vLLM side, driver half: answer, induce and record on vLLM (`--engine vllm`).

`VLLMEngine` loads a model into vLLM (eager, or compiled with `compile=True`; no prefix caching;
our worker extension `npti_lens.vllm.worker`) and offers what the answering layer needs from a model: a `tokenizer`, its
dimensions and name, `generate(prompts, cfg, induction=...)` returning the TransformerLens loop's
`Generation`s for the same token ids, and `record(pairs, stats)`, the teacher-forced answer-token
statistics of `npti_lens.method.stats`, gathered in the workers. Inductions are sent to the workers once
(keyed by their content) and named per request in `SamplingParams.extra_args`, so one batch can mix
poles, gammas and plain requests. vLLM is imported only here and only when an engine is made.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file

from npti_lens.core.errors import UserError
from npti_lens.core.files import check_writable
from npti_lens.method.induction import InduceConfig, check_config, check_fits
from npti_lens.method.neurons import NeuronSet
from npti_lens.method.stats import Stats
from npti_lens.model.generation import GenerateConfig, Generation
from npti_lens.model.gguf import is_gguf_spec, resolve_gguf
from npti_lens.model.load import answer_end_ids, facts, name_model, same_model_key
from npti_lens.vllm.args import compile_settings, refusal
from npti_lens.vllm.recording import COUNT_LIMIT
from npti_lens.vllm.resources import _env, check_cpu_head_dim, cpu_binding, stats_bytes

ENGINES = ("tl", "vllm")
SHARED_ENV = "NPTI_SHARED_DIR"  # where workers hand statistics to the driver (shared across nodes)
EXTENSION = "npti_lens.vllm.worker.NPTIWorkerExtension"
# What a neuron set needs to cross to a worker (plain tensors and strings: no pickle).
_SET_FIELDS = ("trait", "pole", "model", "n_layers", "d_mlp", "layer", "index", "diff", "p_active", "q95")
Pair = tuple[NeuronSet, NeuronSet | None]


def vllm_available() -> str | None:
    """None if vLLM imports, else why not (one line)."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the engine is unavailable
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def use_v1_runner() -> None:
    """Ask vLLM for its V1 model runner, whose batch layout the worker hooks read (on GPUs with
    Triton vLLM 0.32 picks its V2 runner by default; the CPU backend runs V1 anyway)."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


def set_payload(ns: NeuronSet) -> dict[str, Any]:
    """A neuron set as plain lists and strings (what vLLM's RPC carries without pickle)."""
    return {f: v.tolist() if isinstance(v := getattr(ns, f), torch.Tensor) else v for f in _SET_FIELDS}


def pairs_key(pairs: Sequence[Pair]) -> str:
    """A name for an induction's neuron sets, from their content."""
    h = hashlib.sha256()
    for pair in pairs:
        for ns in pair:
            if ns is None:
                h.update(b"none;")
                continue
            h.update(f"{ns.trait}/{ns.pole}/{ns.n_layers}x{ns.d_mlp};".encode())
            for t in (ns.flat(), ns.diff.double(), ns.q95.double()):
                h.update(t.contiguous().numpy().tobytes())
    return "sets-" + h.hexdigest()[:24]


def induction_extra(key: str, cfg: InduceConfig) -> dict[str, Any]:
    """The extra_args that ask a worker for induction `key` under `cfg`."""
    check_config(cfg, stacklevel=4)
    return {
        "npti_induction": key,
        "npti_gamma": float(cfg.gamma),
        "npti_keep_prob": float(cfg.keep_prob),
        "npti_keep": cfg.keep,
        "npti_clamp_order": cfg.clamp_order,
        "npti_clamp_layers": cfg.clamp_layers,
        "npti_positions": cfg.positions,
        "npti_seed": int(cfg.seed),
        "npti_activate": bool(cfg.activate),
        "npti_deactivate": bool(cfg.deactivate),
    }


class VLLMEngine:
    """A model in vLLM with NPTI's edit and statistics in its workers (see the module doc)."""

    engine_name = "vllm"

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        tensor_parallel: int = 1,
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float | None = None,
        induce_defaults: InduceConfig | None = None,
        shared_dir: str | Path | None = None,
        compile: bool = False,  # noqa: A002 - vLLM compilation with the edit as a split point
        **llm_kwargs: Any,
    ) -> None:
        why = vllm_available()
        if why:
            raise UserError(
                f"--engine vllm: vLLM does not import here ({why}); install it (README: Engines), "
                "or use --engine tl"
            )
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm import LLM

        source = resolve_gguf(str(model)) if is_gguf_spec(str(model)) else None
        # a GGUF runs from its dequantised folder: the very weights the TL loop loads
        path = source.folder if source is not None else Path(str(model)).expanduser()
        name = str(path) if path.exists() else str(model)
        if tensor_parallel < 1:
            raise UserError(f"{tensor_parallel} is not 1 or more", field="tensor_parallel")
        bind = None if torch.cuda.is_available() else cpu_binding(tensor_parallel)
        use_v1_runner()
        if kv_cache_gib is None and not torch.cuda.is_available():
            kv_cache_gib = 1.0  # on a CPU vLLM would otherwise reserve a share of all memory
        if kv_cache_gib is not None:
            llm_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        hf = AutoConfig.from_pretrained(name)
        if not torch.cuda.is_available():
            check_cpu_head_dim(hf)
        settings = {
            # eager, or compiled with piecewise CUDA graphs split at NPTI's op (npti_lens.vllm.ops)
            **(compile_settings() if compile else {"enforce_eager": True}),
            "enable_prefix_caching": False,  # every position computed: statistics count each once
            **llm_kwargs,
        }
        self.compiled = settings.get("enforce_eager") is False
        why = refusal(settings)
        if why:
            raise UserError(f"VLLMEngine: {why}")
        if torch.cuda.is_available() and kv_cache_gib is None:
            # the statistics the workers keep are allocated after vLLM sized its KV cache: leave room
            total = torch.cuda.get_device_properties(0).total_memory
            gpu_memory_utilization -= stats_bytes(hf, tensor_parallel) / total
        self.shared_dir = check_writable(  # before vLLM starts: a bad folder is one line, not a traceback
            shared_dir or os.environ.get(SHARED_ENV) or tempfile.gettempdir(), SHARED_ENV, folder=True
        )
        with _env("VLLM_CPU_OMP_THREADS_BIND", bind):  # read when the workers start
            self.llm = LLM(
                model=name,
                tokenizer=name,
                dtype="float32" if dtype == "auto" and not torch.cuda.is_available() else dtype,
                tensor_parallel_size=tensor_parallel,
                seed=seed,
                generation_config="vllm",  # sampling comes from the protocol, not the model's defaults
                worker_extension_cls=EXTENSION,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                **settings,
            )
        base = asdict(induce_defaults or InduceConfig())
        dims = self.llm.collective_rpc("npti_setup", args=(base,))
        self.n_layers, self.d_mlp = int(dims[0]["n_layers"]), int(dims[0]["d_mlp"])
        self.gated, self.tensor_parallel = bool(dims[0]["gated"]), int(dims[0]["tp"])
        self.n_positions = int(self.llm.llm_engine.model_config.max_model_len)
        self.cfg = SimpleNamespace(model_name=name, d_model=int(getattr(hf, "hidden_size", 0) or hf.n_embd))
        self.name = same_model_key(name)
        if source is not None:
            name_model(self, source)
            self.name = source.name
        try:
            gen_cfg = GenerationConfig.from_pretrained(name)
        except OSError:
            gen_cfg = None
        self.eos_ids = answer_end_ids(self.tokenizer, gen_cfg)
        self._registered: set[str] = set()
        facts(self)  # the same handle the TL loop carries

    # ----- answering -----------------------------------------------------------------------------

    def register(self, pairs: Sequence[Pair]) -> str:
        """Send an induction's neuron sets to the workers (once); returns the key requests name."""
        for ns in (s for pair in pairs for s in pair if s is not None):
            check_fits(self, ns, allow_other_model=True)  # dimensions; the model id is answer()'s check
        key = pairs_key(pairs)
        if key not in self._registered:
            payload = [(set_payload(t), None if o is None else set_payload(o)) for t, o in pairs]
            self.llm.collective_rpc("npti_register", args=(key, payload))
            self._registered.add(key)
        return key

    def sampling(self, gcfg: GenerateConfig, i: int, extra: dict[str, Any] | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=gcfg.max_new_tokens,
            temperature=max(gcfg.temperature, 0.0),
            top_p=gcfg.top_p,
            repetition_penalty=gcfg.repetition_penalty,
            ignore_eos=gcfg.ignore_eos,
            stop_token_ids=[] if gcfg.ignore_eos else list(self.eos_ids),
            seed=gcfg.seed + i if gcfg.temperature > 0 else None,
            detokenize=False,
            extra_args=dict(extra) if extra else None,
        )

    def generate(
        self,
        prompts: list[list[int]],
        gcfg: GenerateConfig | None = None,
        *,
        extra: dict[str, Any] | list[dict[str, Any] | None] | None = None,
        indices: list[int] | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Answers to `prompts` (token ids); `extra`: the requests' npti arguments, one for all or per
        prompt; `indices`: each prompt's place in its own set (its sampling seed is `seed + index`, so
        sets batched together sample as they would alone; default: the place in `prompts`)."""
        from vllm.inputs import TokensPrompt

        gcfg = gcfg or GenerateConfig()
        extras = extra if isinstance(extra, list) else [extra] * len(prompts)
        places = range(len(prompts)) if indices is None else indices
        params = [self.sampling(gcfg, i, e) for i, e in zip(places, extras, strict=True)]
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=progress
        )
        self._check_finite()
        eos = set(self.eos_ids)
        gens = []
        for p, out in zip(prompts, outs, strict=True):
            ids = list(out.outputs[0].token_ids)
            hit = bool(ids) and ids[-1] in eos and not gcfg.ignore_eos
            answer = ids[:-1] if hit else ids
            text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
            gens.append(Generation(prompt_ids=list(p), answer_ids=answer, text=text, hit_eos=hit))
        return gens

    def induce_extra(self, pairs: Sequence[Pair], cfg: InduceConfig) -> dict[str, Any]:
        key = self.register(pairs)
        extra = induction_extra(key, cfg)
        self.llm.collective_rpc("npti_prepare", args=(key, asdict(cfg)))  # plans built outside a forward
        return extra

    def _check_finite(self) -> None:
        if any(self.llm.collective_rpc("npti_take_nonfinite")):
            raise UserError(
                "the induction made activations infinite or NaN; its outputs are meaningless: lower --gamma"
            )

    def sequence_nlls(self, seqs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, int]]:
        """(negative log-likelihood, tokens) of each answer's ids given its prompt's ids, plain model
        (as `npti_lens.evaluation.capability.sequence_nlls`), from vLLM's prompt log-probabilities."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        todo = [i for i, (_, a) in enumerate(seqs) if a]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
        if not todo:
            return out
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        got = self.llm.generate(
            [TokensPrompt(prompt_token_ids=seqs[i][0] + seqs[i][1]) for i in todo], params, use_tqdm=False
        )
        for i, res in zip(todo, got, strict=True):
            p, a = seqs[i]
            ids, lps = p + a, res.prompt_logprobs
            nll = -sum(float(lps[j][ids[j]].logprob) for j in range(len(p), len(ids)))
            out[i] = (nll, len(a))
        return out

    # ----- statistics ----------------------------------------------------------------------------

    def record(
        self,
        sequences: list[tuple[list[int], list[int]]],
        stats: Stats,
        bucket: str = "record",
        *,
        defer: bool = False,
    ) -> None:
        """Teacher-force prompt + answer and add answer-position statistics to `stats` (as
        `npti_lens.method.stats.record_batch`), gathered by the workers, each rank its own neurons.

        With `defer`, the counts stay in the workers until `take(stats, bucket)` (a search takes them
        at its checkpoints: no transfer per batch); they are taken anyway before a worker's int32
        counts could overflow."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.compiled:
            raise UserError(
                "search statistics need eager vLLM (the residual sums are hooks compiled code skips): "
                "drop --compile for npti search"
            )
        todo = [(p, a) for p, a in sequences if a]
        if todo:
            params = [
                SamplingParams(
                    max_tokens=1,
                    detokenize=False,
                    extra_args={"npti_record": bucket, "npti_record_from": len(p)},
                )
                for p, _ in todo
            ]
            self.llm.generate([TokensPrompt(prompt_token_ids=p + a) for p, a in todo], params, use_tqdm=False)
        if not defer or max(self.llm.collective_rpc("npti_counted", args=(bucket,))) >= COUNT_LIMIT:
            self.take(stats, bucket)

    def take(self, stats: Stats, bucket: str = "record") -> None:
        """Add the counts the workers hold for `bucket` to `stats`, and clear them there."""
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="npti-stats-", dir=self.shared_dir) as folder:
            files = self.llm.collective_rpc("npti_take", args=(bucket, folder))
            if all(f is None for f in files):
                return
            if any(f is None for f in files):
                raise RuntimeError("npti: some tensor-parallel ranks recorded nothing")
            shards = [load_file(f) for f in files]
        n_tokens = {int(s["n_tokens"][0]) for s in shards}
        if len(n_tokens) != 1:
            raise RuntimeError(f"npti: ranks counted different token numbers {sorted(n_tokens)}")

        def cat(name: str) -> torch.Tensor:
            return torch.cat([s[name] for s in shards], 1).to(stats.n_active.device)

        stats.n_tokens += n_tokens.pop()
        stats.n_active += cat("n_active").long()
        stats.hist += cat("hist").long()
        stats.sum += cat("sum")
        stats.sum_sq += cat("sum_sq")
        if stats.up_sum is not None and self.gated:
            stats.up_sum += cat("up_sum")
        if stats.resid_sum is not None:
            stats.resid_sum += shards[0]["resid_sum"].to(stats.resid_sum.device)

    def close(self) -> None:
        """Shut vLLM down (its worker processes end)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(
                getattr(engine, "engine_core", None), "shutdown", None
            )
            if shutdown:
                shutdown()
            self.llm = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
