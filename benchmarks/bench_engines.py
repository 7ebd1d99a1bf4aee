"""Engine figures: tokens per second of the TransformerLens loop and of vLLM, plain and induced, and
a search's answer tokens per second end to end (answers + statistics).

    python benchmarks/bench_engines.py [--quick] [--json OUT] [--device cpu|cuda] [--shape llama100m|llama8b]

One randomly initialised Llama of the given shape (saved to a temporary folder as HF weights, so
vLLM can load it), random 32-token prompts, fixed-length greedy answers (EOS ignored). Both engines
get the same token ids. Each figure is the median of `--repeats` runs after one warm-up. The
induction is 1% of all neurons per pole (the shapes of `bench.py`), shifted at generated tokens.
On a GPU each vLLM engine then runs one induced batch and one recording with
`torch.cuda.set_sync_debug_mode("error")` around every layer's edit and recording
(`npti_strict`): `host_syncs_in_hooks` is 0, or the sync that raised.
`vllm` runs eagerly, as `npti --engine vllm` does; `vllm-compiled` is `--compile` (vLLM's
compilation, on a GPU with piecewise CUDA graphs split at NPTI's op; no search figure: a search
records in eager mode). `--engines tl,vllm,vllm-compiled` for all three.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from npti_lens.core.threads import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def save_model(shape: str, folder: Path, dtype: str) -> Path:
    from bench import SHAPES
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    h, n_layers, inter, heads, kv, vocab = SHAPES[shape]
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(vocab - 4)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=h, num_hidden_layers=n_layers, intermediate_size=inter,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def timed(fn, repeats: int, device: str) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--shape", default=None, help="llama100m (CPU default) or llama8b (GPU default)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the TL loop (CPU)")
    ap.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default 1,16,64; GPU 1,32,256)"
    )
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--engines", default="tl,vllm")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    shape = args.shape or ("llama8b" if gpu else "llama100m")
    batches = [int(b) for b in (args.batches or ("1,32,256" if gpu else "1,16,64")).split(",")]
    reps = 1 if args.quick else 3
    set_threads(args.threads)

    from bench import full_sets

    from npti_lens.method.induction import InduceConfig, induce
    from npti_lens.method.recording import record_batch
    from npti_lens.method.stats import Stats
    from npti_lens.model.generation import GenerateConfig, generate
    from npti_lens.model.load import ModelConfig, load_model, model_dims

    out: dict[str, Any] = {
        "shape": shape, "dtype": dtype, "device": args.device, "new_tokens": args.new_tokens,
        "prompt_len": 32, "threads": args.threads, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if gpu else None, "tl": {}, "vllm": {}, "vllm-compiled": {},
    }  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(4, 1000, (b, 32), generator=gen).tolist() for b in batches}
    cfg = InduceConfig(gamma=1.0)  # the npti protocol's rules: Bernoulli 0.9, clamp before, target layers
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(shape, Path(tmp) / shape, dtype)
        engines = args.engines.split(",")

        def figures(key: str, plain_fn, induced_fn, record_fn) -> None:
            """Plain and induced tokens/s per batch, and search (answers + statistics) at the largest."""
            for b in batches:
                g = GenerateConfig(
                    max_new_tokens=args.new_tokens, batch_size=b, repetition_penalty=1.0, ignore_eos=True
                )
                plain = timed(lambda b=b, g=g: plain_fn(prompts[b], g), reps, args.device)
                ind = timed(lambda b=b, g=g: induced_fn(prompts[b], g), reps, args.device)
                toks = b * args.new_tokens
                out[key][str(b)] = {
                    "plain_tok_s": toks / plain["median"],
                    "induced_tok_s": toks / ind["median"],
                }
                print(key, b, out[key][str(b)], flush=True)

            if record_fn is None:
                return
            b = max(batches)
            g = GenerateConfig(
                max_new_tokens=args.new_tokens, batch_size=b, repetition_penalty=1.0, ignore_eos=True
            )

            def search() -> None:
                gens = plain_fn(prompts[b], g)
                record_fn([(x.prompt_ids, x.answer_ids) for x in gens])

            t = timed(search, reps, args.device)
            out[key]["search_answer_tok_s"] = b * args.new_tokens / t["median"]
            print(key, "search", out[key]["search_answer_tok_s"], flush=True)

        if "tl" in engines:
            model = load_model(ModelConfig(model=str(folder), device=args.device, dtype=dtype))
            tgt, opp = full_sets(model)

            def induced_tl(ps, g):
                with induce(model, [(tgt, opp)], cfg):
                    return generate(model, ps, g)

            figures(
                "tl",
                lambda ps, g: generate(model, ps, g),
                induced_tl,
                lambda pairs: record_batch(model, pairs, Stats.zeros(*model_dims(model))),
            )
            del model
            if gpu:
                torch.cuda.empty_cache()
        for key in ("vllm", "vllm-compiled"):
            if key not in engines:
                continue
            from npti_lens.vllm.engine import VLLMEngine

            t0 = time.perf_counter()
            engine = VLLMEngine(str(folder), dtype=dtype, compile=key == "vllm-compiled")
            out[key]["load_s"] = time.perf_counter() - t0
            tgt, opp = full_sets(engine)
            extra = engine.induce_extra([(tgt, opp)], cfg)
            figures(
                key,
                lambda ps, g, engine=engine: engine.generate(ps, g),
                lambda ps, g, engine=engine, extra=extra: engine.generate(ps, g, extra=extra),
                None
                if engine.compiled
                else lambda pairs, engine=engine: engine.record(
                    pairs, Stats.zeros(engine.n_layers, engine.d_mlp)
                ),
            )
            if gpu:  # any device-to-host sync inside the per-layer edit / recording raises here
                g = GenerateConfig(max_new_tokens=8, batch_size=max(batches), ignore_eos=True)
                engine.llm.collective_rpc("npti_strict", args=(True,))
                try:
                    gens = engine.generate(prompts[max(batches)], g, extra=extra)
                    if not engine.compiled:
                        stats = Stats.zeros(engine.n_layers, engine.d_mlp)
                        engine.record([(x.prompt_ids, x.answer_ids) for x in gens], stats)
                    out[key]["host_syncs_in_hooks"] = 0
                except Exception as e:  # noqa: BLE001 - the figure is the failure, reported
                    out[key]["host_syncs_in_hooks"] = f"a sync: {type(e).__name__}: {str(e)[:300]}"
                with contextlib.suppress(Exception):  # a sync that raised may have ended the engine
                    engine.llm.collective_rpc("npti_strict", args=(False,))
                print(key, "host syncs in the hooks:", out[key]["host_syncs_in_hooks"], flush=True)
            engine.close()
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
