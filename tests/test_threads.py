"""The CPU thread policy: small models one thread, larger ones the free cores; what the user set wins;
bad counts are one line before any work. (Its speed under load: benchmarks/bench_threads.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from npti_lens.core import threads
from npti_lens.core.errors import UserError


@pytest.fixture
def policy_state(monkeypatch):
    """The state of a fresh process on 2 cores (torch's default: 2 threads, nothing set); torch's
    thread count restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_requested", None)
    monkeypatch.setattr(threads, "_ours", None)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_policy_by_size_and_load():
    assert threads.policy(1_000_000, 8, 0.0).threads == 1  # the organism: one thread, whatever is free
    assert threads.policy(135_000_000, 2, 0.0).threads == 2
    assert threads.policy(135_000_000, 2, 1.0).threads == 1  # one busy process takes a core
    assert threads.policy(135_000_000, 2, 0.4).threads == 2  # less than half a core: still free
    assert threads.policy(135_000_000, 2, 0.5).threads == 1
    assert threads.policy(135_000_000, 8, 2.6).threads == 5
    assert threads.policy(135_000_000, 2, 7.0).threads == 1  # never fewer than one


def test_busy_cores_sees_a_spinning_process():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        busy = threads.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    # one process spins a whole core; this process sleeps while it samples (other load may add)
    assert busy >= 0.7


def test_busy_cores_leaves_this_process_out():
    """Our own spinning thread is not someone else's load: each sample with it spinning is set
    beside one without, taken just before (other processes' load, such as a second test worker's,
    is in both); counted as others', it would add about one core to every pair."""
    import threading
    import time

    def spun(sample_s: float) -> float:
        stop = time.time() + sample_s + 0.2

        def spin() -> None:
            while time.time() < stop:
                pass

        t = threading.Thread(target=spin)
        t.start()
        try:
            return threads.busy_cores(sample_s)
        finally:
            t.join()

    pairs = [(threads.busy_cores(0.3), spun(0.3)) for _ in range(3)]
    added = sum(b - a for a, b in pairs) / len(pairs)
    assert added < 0.5, pairs


def test_fit_threads_follows_the_policy(policy_state, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda *a: 0.0)
    assert threads.fit_threads(n_params=1_000).threads == 1 and torch.get_num_threads() == 1
    # a later, larger model: this module set the 1 itself, so it may change it
    assert threads.fit_threads(n_params=100_000_000).threads == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "busy_cores", lambda *a: 1.0)
    assert threads.fit_threads(n_params=100_000_000).threads == 1 and torch.get_num_threads() == 1


def test_what_the_user_set_wins(policy_state, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda *a: 0.0)
    torch.set_num_threads(3)  # the user's own call, before any load
    choice = threads.fit_threads(n_params=1_000)
    assert choice.threads == 3 and "torch.set_num_threads(3)" in choice.reason
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert "OMP_NUM_THREADS" in threads.fit_threads(n_params=1_000).reason
    monkeypatch.setenv(threads.ENV, "2")  # ours beats theirs
    assert threads.fit_threads(n_params=1_000).threads == 2 and torch.get_num_threads() == 2
    threads.set_threads(1)  # and --threads beats the environment
    assert threads.fit_threads(n_params=100_000_000).threads == 1 and torch.get_num_threads() == 1


def test_load_model_applies_the_policy(policy_state, tiny_dirs, monkeypatch):
    from npti_lens.model.load import load_model

    load_model(str(tiny_dirs["llama"]))
    assert torch.get_num_threads() == 1  # a tiny model: one thread


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_counts_are_one_line(value):
    with pytest.raises(UserError, match="not a thread count"):
        threads.parse_threads(value, "--threads")


def test_cli_refuses_bad_threads_before_any_work(tmp_path):
    env_bad = subprocess.run(
        [sys.executable, "-m", "npti_lens.cli", "data", "sample", "--out", str(tmp_path / "d")],
        env={**_env(), threads.ENV: "many"}, capture_output=True, text=True,
    )  # fmt: skip
    assert env_bad.returncode == 2
    assert env_bad.stderr.strip().splitlines() == [
        "npti data: error: NPTI_THREADS: 'many' is not a thread count (1 or more)"
    ]
    assert not (tmp_path / "d").exists()
    flag_bad = subprocess.run(
        [sys.executable, "-m", "npti_lens.cli", "--threads", "0", "generate", "--model", "smollm2",
         "--questions", "nowhere", "--out", str(tmp_path / "o.jsonl")],
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert flag_bad.returncode == 2 and "--threads: 0 is not a thread count" in flag_bad.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_the_cli_sets_a_passive_wait_policy_unless_the_user_chose():
    env: dict[str, str] = {}
    threads.passive_wait_env(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for theirs in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_NUM_THREADS": "2"}):
        env = dict(theirs)
        threads.passive_wait_env(env)
        assert env == theirs


def test_threads_flag_reaches_torch(tmp_path):
    """`npti --threads 1 COMMAND` and `npti COMMAND --threads 1` both set torch's count."""
    code = (
        "import sys, torch\nfrom npti_lens.cli import build_parser, _threads\n"
        "for argv in (['--threads', '1', 'data', 'sample', '--out', 'x'], ['data', 'sample', '--out', 'x', '--threads', '1']):\n"
        "    torch.set_num_threads(2)\n"
        "    _threads(build_parser(argv).parse_args(argv))\n"
        "    assert torch.get_num_threads() == 1, argv\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in (threads.ENV, "OMP_NUM_THREADS")}
