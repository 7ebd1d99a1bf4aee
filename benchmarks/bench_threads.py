"""CPU threads under load: whole `npti` commands idle and beside one busy process, old default vs new.

    python benchmarks/bench_threads.py [--cases organism,smollm2,vllm] [--repeats 1] [--json OUT]

The busy process is a bounded spin loop this script starts before a run and stops after it. "old"
is torch's default (one spinning OpenMP thread per core, which the package leaves alone when the
user sets OMP_NUM_THREADS); "new" is npti_lens.core.threads' policy with nothing set. Cases:
organism: `npti demo` (the organism, whole); smollm2: `npti generate --model smollm2`, 8 test
questions, 48 tokens (TL loop); vllm: the same with `--engine vllm`, 48 questions. Times are whole
commands (model loading included), as a user waits for them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "npti_lens" / "data" / "questions"
SPIN = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def case_argv(case: str, out: Path) -> list[str]:
    npti = [sys.executable, "-m", "npti_lens.cli"]
    if case == "organism":
        return [*npti, "demo", "--out", str(out / "demo")]
    engine = ["--engine", "vllm"] if case == "vllm" else []
    limit = "48" if case == "vllm" else "8"
    split = "search" if case == "vllm" else "test"
    return [*npti, "generate", "--model", "smollm2", *engine, "--questions",
            str(QUESTIONS / split / "Extraversion.json"), "--limit", limit, "--max-new-tokens", "48",
            "--out", str(out / "gen.jsonl")]  # fmt: skip


def variant_env(variant: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "NPTI_THREADS")
    }
    if variant == "old":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))  # torch's default, left alone
    return env


def run_once(case: str, variant: str, busy: bool, timeout: float) -> float:
    spinner = None
    if busy:
        spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(s=timeout + 60)])
        time.sleep(1.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run(
                case_argv(case, Path(tmp)), env=variant_env(variant), check=True, timeout=timeout,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            return time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="organism,smollm2,vllm")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds a run may take")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    for case in args.cases.split(","):
        for rep in range(args.repeats):
            for variant in ("old", "new"):
                for busy in (False, True):
                    t = run_once(case, variant, busy, args.timeout)
                    key = f"{variant} {'busy' if busy else 'idle'}"
                    results.setdefault(case, {}).setdefault(key, []).append(t)
                    print(f"{case:<9} {key:<9} run {rep + 1}: {t:7.1f} s", flush=True)
    print()
    print(
        f"{'case':<9}{'old idle':>9}{'old busy':>9}{'ratio':>7}{'new idle':>9}{'new busy':>9}{'ratio':>7}{'new/old idle':>13}"
    )
    for case, r in results.items():
        m = {k: sum(v) / len(v) for k, v in r.items()}
        print(
            f"{case:<9}{m['old idle']:>9.1f}{m['old busy']:>9.1f}{m['old busy'] / m['old idle']:>7.2f}"
            f"{m['new idle']:>9.1f}{m['new busy']:>9.1f}{m['new busy'] / m['new idle']:>7.2f}"
            f"{m['new idle'] / m['old idle']:>13.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "cores": len(os.sched_getaffinity(0)),
                                               "seconds": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
