"""Benchmark the hot paths of npti_lens: recording, induction, teacher forcing, memory, scaling.

    python benchmarks/bench.py [--quick] [--json OUT] [--device cpu|cuda] [--threads N] [--models ...]

Every number is a median over repeats with its spread (min-max), measured side by side in one run.
Models: the shipped organism, a randomly initialised ~100M-parameter Llama, and on a GPU a random
model of Llama-3-8B's shape (or 1B) in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from npti_lens.core.threads import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # name: (hidden, layers, intermediate, heads, kv heads, vocab)
    "llama100m": (768, 12, 2048, 12, 4, 32000),
    "llama1b": (2048, 16, 8192, 32, 8, 128256),
    "llama8b": (4096, 32, 14336, 32, 8, 128256),
}


HEADLINE = ("record_overhead", "induce_overhead", "teacher_forcing_speedup", "memory_growth_16x")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(60)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(name: str, device: str, dtype: str):
    from npti_lens.model.load import ModelConfig, load_model

    if name == "organism":
        return load_model(ModelConfig(model="organism", device=device, dtype=dtype))
    from transformers import LlamaConfig, LlamaForCausalLM

    h, n_layers, inter, heads, kv, vocab = SHAPES[name]
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        num_hidden_layers=n_layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    default = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)  # build in the target dtype: an 8B model in fp32 would not fit twice
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    return load_model(
        ModelConfig(model=name, device=device, dtype=dtype), hf_model=hf, tokenizer=tiny_tokenizer()
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeats}


def random_sequences(model, n: int, prompt_len: int, answer_len: int, seed: int = 0):
    vocab = int(model.cfg.d_vocab)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, prompt_len + answer_len), generator=g).tolist()
    return [(row[:prompt_len], row[prompt_len:]) for row in ids]


def full_sets(model, share: float = 0.01, seed: int = 0):
    """Random target and opposite neuron sets of `share` of all neurons each (Llama-3-8B's NPTI sets
    hold 2-6% of the neurons per pole)."""
    from npti_lens.method.neurons import NeuronSet
    from npti_lens.model.load import model_dims, model_id

    n_layers, d_mlp = model_dims(model)  # a TransformerBridge or an engine
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_layers * d_mlp, generator=g)
    k = max(1, int(share * n_layers * d_mlp))

    def make(flat, pole):
        n = flat.numel()
        return NeuronSet(
            trait="Extraversion",
            pole=pole,
            model=model_id(model),
            n_layers=n_layers,
            d_mlp=d_mlp,
            layer=flat // d_mlp,
            index=flat % d_mlp,
            diff=torch.full((n,), 0.3, dtype=torch.float64),
            p_active=torch.full((n,), 0.5, dtype=torch.float64),
            q95=torch.full((n,), 0.5, dtype=torch.float64),
        )

    return make(perm[:k], "high"), make(perm[k : 2 * k], "low")


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from npti_lens.method.recording import record_batch
    from npti_lens.method.stats import Stats
    from npti_lens.model.generation import GenerateConfig
    from npti_lens.model.sites import mlp_sites

    model = build_model(name, args.device, args.dtype)
    sites = mlp_sites(model)
    hf = model.original_model
    dev = args.device
    reps = 3 if args.quick else 7
    # Answers at least as long as prompts, as in NPTI's search (persona prompt, ~200-token answers).
    batch, prompt_len, answer_len = (8, 32, 64) if args.quick else (16, 64, 128)
    if name == "llama8b" or name == "llama1b":
        batch, prompt_len, answer_len = 32, 64, 192
    seqs = random_sequences(model, batch, prompt_len, answer_len)
    out: dict[str, Any] = {
        "model": name,
        "n_params": sum(p.numel() for p in hf.parameters()),
        "n_layers": sites.n_layers,
        "d_mlp": sites.d_mlp,
        "batch": batch,
        "prompt_len": prompt_len,
        "answer_len": answer_len,
    }
    ids = torch.tensor([p + a for p, a in seqs], device=model.cfg.device)

    parts = set(args.parts.split(","))
    stats = Stats.zeros(sites.n_layers, sites.d_mlp, device=model.cfg.device)
    n_gen = 32 if args.quick else 64
    if name in ("llama8b", "llama1b"):
        n_gen = 128
    gcfg = GenerateConfig(max_new_tokens=n_gen, batch_size=batch, repetition_penalty=1.0, ignore_eos=True)
    prompts = [p for p, _ in seqs]
    toks = batch * n_gen

    if "record" in parts:
        # 1. recording overhead: teacher-forced forward with the statistics hooks vs without.
        def plain_forward():
            with torch.inference_mode():
                hf.base_model(input_ids=ids, use_cache=False)

        rec = timed(lambda: record_batch(model, seqs, stats, sites), reps, dev)
        plain = timed(plain_forward, reps, dev)
        out["record_overhead"] = rec["median"] / plain["median"]
        out["record"] = {"with_hooks_s": rec, "plain_forward_s": plain}
    if "induce" in parts:
        bench_induce(model, prompts, gcfg, toks, reps, dev, out)
    if "teacher_forcing" in parts:
        bench_teacher_forcing(model, seqs, gcfg, stats, reps, dev, out)
    if "scaling" in parts:
        bench_scaling(model, prompt_len, args.quick, reps, dev, out)
    return out


def bench_induce(model, prompts, gcfg, toks, reps, dev, out) -> None:
    """2. induction overhead: fixed-length greedy generation with and without the induction."""
    from npti_lens.method.induction import InduceConfig, induce
    from npti_lens.model.generation import generate

    tgt, opp = full_sets(model)
    gen_plain = timed(lambda: generate(model, prompts, gcfg), reps, dev)

    def gen_induced():
        with induce(model, [(tgt, opp)], InduceConfig(gamma=1.0)):
            generate(model, prompts, gcfg)

    gen_ind = timed(gen_induced, reps, dev)
    out["induce_overhead"] = gen_ind["median"] / gen_plain["median"]
    out["induce"] = {
        "plain_tok_per_s": toks / gen_plain["median"],
        "induced_tok_per_s": toks / gen_ind["median"],
        "plain_s": gen_plain,
        "induced_s": gen_ind,
        "neurons_per_pole": len(tgt),
    }


def bench_teacher_forcing(model, seqs, gcfg, stats, reps, dev, out) -> None:
    """3. teacher forcing vs recording while decoding: answer tokens of statistics per second."""
    from npti_lens.method.recording import record_batch, recording
    from npti_lens.method.stats import Stats
    from npti_lens.model.generation import generate
    from npti_lens.model.sites import mlp_sites

    sites = mlp_sites(model)
    prompts, n_gen, batch = [p for p, _ in seqs], gcfg.max_new_tokens, len(seqs)
    toks = batch * n_gen
    dec_stats = Stats.zeros(sites.n_layers, sites.d_mlp, device=model.cfg.device)

    def record_decoding():
        with recording(model, dec_stats, sites):
            generate(model, prompts, gcfg)

    tf_seqs = [(p, a[:n_gen]) for p, a in seqs]
    tf = timed(lambda: record_batch(model, tf_seqs, stats, sites), reps, dev)
    dec = timed(record_decoding, reps, dev)
    tf_rate, dec_rate = toks / tf["median"], (batch * (n_gen - 1)) / dec["median"]
    out["teacher_forcing_speedup"] = tf_rate / dec_rate
    out["teacher_forcing"] = {"teacher_forcing_tok_per_s": tf_rate, "decoding_tok_per_s": dec_rate}


def bench_scaling(model, prompt_len, quick, reps, dev, out) -> None:
    """5. scaling: decode time per generated token as the batch grows."""
    from npti_lens.model.generation import GenerateConfig, generate

    sizes = [1, 4, 16] if quick else [1, 4, 16, 64]
    scaling = {}
    for b in sizes:
        pr = [p for p, _ in random_sequences(model, b, prompt_len, 1, seed=b)]
        cfg_b = GenerateConfig(
            max_new_tokens=8 if quick else 16, batch_size=b, repetition_penalty=1.0, ignore_eos=True
        )
        t = timed(lambda pr=pr, cfg_b=cfg_b: generate(model, pr, cfg_b), max(2, reps - 2), dev)
        scaling[str(b)] = {
            "s_per_token": t["median"] / (b * cfg_b.max_new_tokens),
            "tok_per_s": b * cfg_b.max_new_tokens / t["median"],
        }
    out["scaling"] = scaling


def memory_child(name: str, n_batches: int, device: str, dtype: str) -> None:
    """Record `n_batches` batches; print the peak memory and the memory before recording (bytes).

    On CUDA: peak allocated by torch. On the CPU: the process's peak resident set size.
    """
    from npti_lens.method.recording import record_batch
    from npti_lens.method.stats import Stats
    from npti_lens.model.sites import mlp_sites

    model = build_model(name, device, dtype)
    sites = mlp_sites(model)
    stats = Stats.zeros(sites.n_layers, sites.d_mlp, device=model.cfg.device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for i in range(n_batches):
        record_batch(model, random_sequences(model, 8, 32, 64, seed=i), stats, sites)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(json.dumps({"peak": int(peak), "before_recording": int(base)}))


def bench_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    peaks, extra = {}, {}
    for mult in (1, 4, 16):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            str(mult),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        peaks[str(mult)] = m["peak"]
        extra[str(mult)] = m["peak"] - m["before_recording"]
    return {
        "peak_bytes": peaks,
        "recording_bytes_over_model": extra,
        "memory_growth_16x": peaks["16"] / peaks["1"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="fewer repeats and smaller sizes (< 5 min on 2 cores)"
    )
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (set deliberately)")
    ap.add_argument(
        "--parts",
        default="record,induce,teacher_forcing,scaling,memory",
        help="which measurements to run (all by default)",
    )
    ap.add_argument("--models", default=None, help="comma-separated: organism, llama100m, llama1b, llama8b")
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.device, args.dtype)
        return
    names = (args.models or ("organism,llama100m" if args.device == "cpu" else "organism,llama8b")).split(",")
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "device": args.device,
            "dtype": args.dtype,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
            "torch": torch.__version__,
        },
        "quick": args.quick,
        "models": {},
    }
    start = time.time()
    for name in names:
        r = bench_model(name, args)
        if "memory" in args.parts.split(","):
            r.update(bench_memory(name, args))
        result["models"][name] = r
        print(f"{name}: " + "  ".join(f"{k} {r[k]:.3f}" for k in HEADLINE if k in r), flush=True)
    # Headline numbers: the largest model benchmarked (the ~100M Llama on a CPU, 8B shape on a GPU).
    main_model = result["models"][names[-1]]
    for key in HEADLINE:
        result[key] = main_model.get(key)
    result["headline_model"] = names[-1]
    result["seconds"] = round(time.time() - start, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "record_overhead",
                    "induce_overhead",
                    "teacher_forcing_speedup",
                    "memory_growth_16x",
                    "headline_model",
                    "seconds",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
