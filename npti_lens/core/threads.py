"""CPU threads: one policy for every command, `load_model` (notebooks, scripts) and the tests.

torch's default on a CPU is one OpenMP thread per core, each spinning while it waits for the
others. Beside one other busy process that collapses: on 2 cores the organism demo went from
48 s to 618 s, a SmolLM2 generation from 15 s to 67 s (benchmarks/bench_threads.py). The policy,
chosen from those measurements (docs/engines.md, "CPU threads"):

- a small model (under `SMALL_MODEL_PARAMS` parameters: the organism, the tiny test models) gets one
  thread: its matrices gain nothing from a second, and one thread cannot wait for another;
- a larger model gets as many threads as there are free cores when it loads (the CPU time other
  processes used over `SAMPLE_S`; a core counts as taken when others use half of it or more), at
  least one;
- what the user asked wins, in this order: `set_threads(n)` (the CLI's `--threads N`), the
  environment variable `NPTI_THREADS`, then their own `OMP_NUM_THREADS` or an earlier
  `torch.set_num_threads`, which are left as they are.

The `npti` command also sets a passive OpenMP wait policy (`OMP_WAIT_POLICY=PASSIVE`, unless the user
set one or `OMP_NUM_THREADS`) before torch loads: threads that sleep instead of spinning keep a
multi-threaded run from collapsing when load arrives after the model was loaded.

Only the CPU: on a GPU the threads do not matter here, and vLLM binds its own CPU threads
(`npti_lens.vllm.resources.cpu_binding`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

from npti_lens.core.errors import UserError

log = logging.getLogger(__name__)

ENV = "NPTI_THREADS"
SMALL_MODEL_PARAMS = 20_000_000
SAMPLE_S = 0.2
TAKEN_SHARE = 0.5  # a core other processes use at least this much of is not free

_requested: int | None = None  # set_threads(n)
_ours: int | None = None  # the count this module last set (a later load may change its own choice)


@dataclass(frozen=True)
class ThreadChoice:
    """What `fit_threads` did: the thread count now in force and why."""

    threads: int
    reason: str


def parse_threads(value: str | int, where: str) -> int:
    """A thread count of 1 or more; anything else is a one-line error naming `where`."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise UserError(f"{where}: {value!r} is not a thread count (1 or more)")
    return n


def set_threads(n: int | None) -> None:
    """Use `n` torch CPU threads from now on, whatever the model (None: back to the policy)."""
    global _requested
    _requested = None if n is None else parse_threads(n, "--threads")
    if _requested is not None:
        _apply(_requested)


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of all cores, all ticks of all cores, number of cores) from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [int(x) for x in lines[0].split()[1:]]
    n = sum(1 for line in lines[1:] if line.startswith("cpu"))
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8]), n


def _own_ticks() -> int:
    """This process's CPU ticks (user + system, threads included)."""
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores' worth of CPU that other processes used over the next `sample_s` seconds (this process
    left out); without /proc/stat, the 1-minute load average."""
    first, own = _cpu_ticks(), _own_ticks()
    if first is None:
        return float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(sample_s)
    second, own2 = _cpu_ticks(), _own_ticks()
    assert second is not None
    total = second[1] - first[1]
    if total <= 0:
        return 0.0
    others = max(0, (second[0] - first[0]) - (own2 - own))
    return second[2] * others / total


def free_cores(n_cores: int, busy: float) -> int:
    """Of `n_cores`, those not taken by `busy` cores' worth of other work (at least 1); a core others
    use `TAKEN_SHARE` of or more is taken."""
    taken = math.floor(busy + (1 - TAKEN_SHARE))
    return max(1, n_cores - taken)


def policy(n_params: int, n_cores: int, busy: float) -> ThreadChoice:
    """The thread count for a model of `n_params` on `n_cores` of which `busy` are used by others."""
    if n_params < SMALL_MODEL_PARAMS:
        return ThreadChoice(1, f"small model ({n_params / 1e6:.1f}M parameters): one thread")
    free = free_cores(n_cores, busy)
    return ThreadChoice(free, f"{free} of {n_cores} cores free (others use {busy:.1f})")


def physical_cores() -> int:
    """Cores of this process's CPUs counted once per physical core (torch's default thread count)."""
    seen = set()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list", encoding="ascii") as f:
                seen.add(f.read().strip())
        except OSError:
            seen.add(str(cpu))
    return max(1, len(seen))


def _user_set() -> str | None:
    """What the user set themselves (left alone), if anything."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    current = torch.get_num_threads()
    if current not in ({_ours} if _ours is not None else {cores(), physical_cores()}):
        return f"torch.set_num_threads({current})"
    return None


def _apply(n: int) -> None:
    global _ours
    import torch

    torch.set_num_threads(n)
    _ours = n
    try:  # numpy's BLAS (scikit-learn's judges) spins its threads the same way
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")
    except ImportError:
        pass


def fit_threads(model: object | None = None, *, n_params: int | None = None) -> ThreadChoice:
    """Set torch's CPU threads for `model` (or a model of `n_params`) by the policy; returns the choice.

    Called by `load_model`; a user's own setting (see the module docstring) is kept.
    """
    import torch

    if _requested is not None:
        _apply(_requested)
        choice = ThreadChoice(_requested, "asked for (--threads)")
    elif os.environ.get(ENV):
        n = parse_threads(os.environ[ENV], ENV)
        _apply(n)
        choice = ThreadChoice(n, f"asked for ({ENV})")
    elif (theirs := _user_set()) is not None:
        choice = ThreadChoice(torch.get_num_threads(), f"the user's {theirs}")
    else:
        if n_params is None:
            n_params = sum(p.numel() for p in model.parameters()) if model is not None else 0  # type: ignore[attr-defined]  # any torch module
        small = n_params < SMALL_MODEL_PARAMS
        choice = policy(n_params, cores(), 0.0 if small else busy_cores())
        _apply(choice.threads)
    log.info("CPU threads: %d (%s)", choice.threads, choice.reason)
    return choice


def passive_wait_env(environ: dict[str, str] | None = None) -> None:
    """Before torch loads: sleeping, not spinning, OpenMP threads, unless the user chose either
    `OMP_WAIT_POLICY` or `OMP_NUM_THREADS` (then everything is theirs)."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env and "OMP_NUM_THREADS" not in env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
