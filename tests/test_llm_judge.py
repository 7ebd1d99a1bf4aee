"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, expected_for, prompt_key, rating_for

from npti_lens.cli import main
from npti_lens.core.constants import TRAITS
from npti_lens.judges.client import retry_after
from npti_lens.judges.llm_judge import (
    LEDGER_FILE,
    fluency_messages,
    parse_rating,
    rating_from_logprobs,
    trait_messages,
)

SECRET = "sk-test-do-not-write-4f1c9e"
# Long enough that a healthy reply never times out on a loaded CI machine (a timed-out reply the
# server did send would count as paid twice); the server's "slow" fault waits longer still.
TIMEOUT = 2.0


def _messages(req) -> list[dict]:
    return [{"role": r, "content": c} for r, c in req.messages]


def _answers(path: Path, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        trait = TRAITS[i % 5]
        pole = "high" if (i // 5) % 2 == 0 else "low"
        rows.append(
            {
                "question": f"Question {i}: what do you do on a free day?",
                "answer": f"Answer {i}: I go out.",
                "trait": trait,
                "pole": pole,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _h(key: str, salt: str) -> int:
    return int(hashlib.sha256((salt + key).encode()).hexdigest()[:8], 16)


def _score_args(gen: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        "score", str(gen), "--out", str(out), "--judge", "openai", "--model", "fake-judge",
        "--base-url", url, "--timeout", str(TIMEOUT), "--backoff", "0.01", *extra,
    ]  # fmt: skip


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_parse_and_rating_from_logprobs_by_hand():
    assert parse_rating("Shows warmth.\nRating: [[4]]") == 4
    assert parse_rating("Rating: [[2]] ... on reflection Rating: [[3]]") == 3  # the last one counts
    assert parse_rating("rating: **[[ 5 ]]") == 5
    assert parse_rating("Rating: 4") is None and parse_rating("Rating: [[7]]") is None
    lp = {"4": math.log(0.5), " 5": math.log(0.25), "3": math.log(0.15), "x": math.log(0.1)}
    assert rating_from_logprobs(lp) == pytest.approx((4 * 0.5 + 5 * 0.25 + 3 * 0.15) / 0.9)
    assert rating_from_logprobs({"x": 0.0}) is None and rating_from_logprobs(None) is None
    low = {"4": math.log(0.3), "x": math.log(0.7)}  # the digits hold 0.3 < MIN_DIGIT_MASS
    assert rating_from_logprobs(low) is None and rating_from_logprobs(low, min_mass=0.2) == pytest.approx(4.0)
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after({}) is None


def test_200_answers_with_20_percent_faults_are_all_scored(tmp_path, api_key, capsys):
    kinds = ["429", "500", "slow", "malformed", "drop"]

    def fault(key, attempt):
        # 20% of prompts fail on their first attempt, a quarter of those on the second too
        if _h(key, "f") % 100 < 20 and (attempt == 0 or (attempt == 1 and _h(key, "g") % 4 == 0)):
            return kinds[_h(key, str(attempt)) % len(kinds)]
        return None

    gen = tmp_path / "gen.jsonl"
    rows = _answers(gen, 200)
    with FakeOpenAI(fault) as srv:
        rc = main(_score_args(gen, tmp_path / "s", srv.url, "--concurrency", "6"))
    out = capsys.readouterr().out
    assert rc == 0, out
    retries = int(re.search(r"\((\d+) retries\)", out).group(1))
    distinct = {prompt_key(m) for m in srv.messages.values()}
    assert len(distinct) == 400  # a trait and a fluency prompt per answer
    assert retries > 60  # the faults were hit (about 100 expected)
    assert srv.requests == len(distinct) + retries
    assert set(srv.paid.values()) == {1} and len(srv.paid) == 400  # nothing paid twice
    scored = [json.loads(line) for line in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 200
    for r, s in zip(rows, scored, strict=True):
        treq = _messages(trait_messages(r["trait"], r["question"], r["answer"]))
        freq = _messages(fluency_messages(r["question"], r["answer"]))
        assert s["trait_rating"] == rating_for(treq) and s["fluency"] == rating_for(freq)
        want = rating_for(treq) if r["pole"] == "high" else 6 - rating_for(treq)
        assert s["trait_score"] == want
        assert s["trait_rating_expected"] == pytest.approx(expected_for(treq))
        assert s["fluency_expected"] == pytest.approx(expected_for(freq))
        assert s["judge_model"] == "fake-judge" and s["judge_error"] is None
        assert s["trait_reply"].endswith(f"Rating: [[{rating_for(treq)}]]")
    summary = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 10 and "trait_score_expected_mean" in summary[0]
    # the key went to the server and nowhere else
    assert srv.auth == {f"Bearer {SECRET}"}
    assert SECRET not in _files_text(tmp_path) and SECRET not in out

    # a rerun sends nothing: every prompt is in the ledger
    with FakeOpenAI() as srv2:
        assert main(_score_args(gen, tmp_path / "s", srv2.url)) == 0
    assert srv2.requests == 0
    assert "400 from the ledger" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_then_rerun_scores_every_answer_exactly_once(tmp_path, sig):
    gen = tmp_path / "gen.jsonl"
    _answers(gen, 60)
    out = tmp_path / "s"
    ledger = out / LEDGER_FILE
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    with FakeOpenAI(hold_after=50) as srv:
        args = _score_args(gen, out, srv.url, "--concurrency", "4")
        # a shell without job control starts background jobs with SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: give the child the default disposition, as a terminal does
        proc = subprocess.Popen(
            [sys.executable, "-m", "npti_lens.cli", *args],
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with srv.lock:
                    paid = sum(srv.paid.values())
                lines = len(ledger.read_text().splitlines()) if ledger.exists() else 0
                if paid >= 50 and lines == paid and srv.in_flight == 4:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the scoring run never reached the hold point")
            proc.send_signal(sig)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        first_paid = sum(srv.paid.values())
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)  # 130: Ctrl-C, caught
    assert not (out / "scores.jsonl").exists()
    assert len(ledger.read_text().splitlines()) == first_paid
    with open(ledger, "a") as f:  # as if the kill had landed in the middle of a write
        f.write('{"key": "0123456789abcdef", "rep')

    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with FakeOpenAI() as srv2:
            assert main(_score_args(gen, out, srv2.url)) == 0
    finally:
        del os.environ["OPENAI_API_KEY"]
    assert srv2.requests == 120 - first_paid
    assert not set(srv.paid) & set(srv2.paid)  # no prompt paid in both runs
    assert len(set(srv.paid) | set(srv2.paid)) == 120 and set((srv.paid + srv2.paid).values()) == {1}
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 60 and all(
        s["trait_rating"] is not None and s["fluency"] is not None for s in scored
    )
    assert SECRET not in _files_text(tmp_path)


def test_retries_stop_and_unrated_replies_are_kept(tmp_path, api_key, capsys):
    gen = tmp_path / "gen.jsonl"
    rows = _answers(gen, 6)
    bad = prompt_key(_messages(trait_messages(rows[0]["trait"], rows[0]["question"], rows[0]["answer"])))
    unrated = prompt_key(_messages(fluency_messages(rows[1]["question"], rows[1]["answer"])))

    def fault(key, attempt):
        return "500" if key == bad else "norating" if key == unrated else None

    with FakeOpenAI(fault) as srv:
        rc = main(_score_args(gen, tmp_path / "s", srv.url, "--max-retries", "2"))
    captured = capsys.readouterr()
    assert rc == 2 and "2 of 6 answers lack a rating" in captured.err
    assert "4 of 6 answers scored by the openai judge, 2 failed" in captured.out  # failures counted as such
    assert srv.attempts[bad] == 3  # the first try and two retries, then it stops
    assert srv.requests == 12 + 2
    scored = [json.loads(line) for line in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert scored[0]["trait_rating"] is None and "HTTP 500" in scored[0]["judge_error"]
    assert scored[0]["fluency"] is not None
    assert scored[1]["fluency"] is None and scored[1]["fluency_reply"].endswith("[[none]]")
    assert "reply has no rating" in scored[1]["judge_error"]
    assert all(s["judge_error"] is None for s in scored[2:])

    # the rerun retries only the failed request; the unrated reply was paid for and is not resent
    with FakeOpenAI(lambda key, attempt: "norating" if key == unrated else None) as srv2:
        rc = main(_score_args(gen, tmp_path / "s", srv2.url))
    assert rc == 2 and srv2.requests == 1 and srv2.attempts[bad] == 1
    scored = [json.loads(line) for line in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert scored[0]["trait_rating"] is not None and scored[1]["fluency"] is None


def test_retry_after_is_honoured(tmp_path, api_key):
    gen = tmp_path / "gen.jsonl"
    _answers(gen, 1)
    with FakeOpenAI(
        lambda key, attempt: "429" if attempt == 0 else None, retry_after={"Retry-After": "1"}
    ) as srv:
        assert main(_score_args(gen, tmp_path / "s", srv.url)) == 0
    assert len(srv.times) == 2
    for times in srv.times.values():
        assert len(times) == 2 and times[1] - times[0] >= 0.95  # backoff alone would wait ~0.01 s


def test_concurrency_stays_within_bound(tmp_path, api_key):
    gen = tmp_path / "gen.jsonl"
    _answers(gen, 20)
    with FakeOpenAI(delay_s=0.05) as srv:
        assert main(_score_args(gen, tmp_path / "s", srv.url, "--concurrency", "3")) == 0
    assert srv.max_in_flight == 3  # reached (so the bound is what limits it) and never passed


def test_missing_key_and_bad_ledger_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = tmp_path / "gen.jsonl"
    _answers(gen, 1)
    assert main(["score", str(gen), "--out", str(tmp_path / "s"), "--judge", "openai"]) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LEDGER_FILE).write_text('{"key": "a", "reply": "x"}\nnot json\n{"key": "b"}\n')
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert main(_score_args(gen, tmp_path / "s", "http://127.0.0.1:9/v1")) == 2
    assert f"{LEDGER_FILE}:2: not a ledger line" in capsys.readouterr().err
    (tmp_path / "s" / LEDGER_FILE).unlink()
    assert main([*_score_args(gen, tmp_path / "s", "http://127.0.0.1:9/v1"), "--max-retries", "-1"]) == 2
    assert "--max-retries: -1 must be 0 or more" in capsys.readouterr().err


def _build_reply(messages: list[dict]) -> str:
    text = messages[-1]["content"]
    topic = re.search(r"about this topic: (.+)\.\n", text).group(1)
    statement = re.search(r'the statement "(.+?)" would', text).group(1)
    frame = {
        "work": "Your manager drops a new assignment on your desk on Friday afternoon",
        "travel": "Your manager drops a new assignment on your desk on Friday afternoon",  # a duplicate
        "food": "A friend cooks you an unfamiliar dish and watches you taste it",
    }[topic]
    return f"Sure.\nQuestion: {frame}. How does it go, given that you {statement.lower()}?"


def test_data_build_dedups_splits_and_resumes(tmp_path, api_key, capsys):
    from npti_lens.inputs.inventory import load_inventory
    from npti_lens.inputs.questions import load_personality_bench

    topics = tmp_path / "topics.txt"
    topics.write_text("work\ntravel\nfood\n")
    out = tmp_path / "built"
    args = ["data", "build", "--out", str(out), "--topics", str(topics), "--per-facet", "4",
            "--model", "fake-writer", "--timeout", str(TIMEOUT), "--backoff", "0.01", "--max-retries", "0"]  # fmt: skip
    failing = set()

    def fault(key, attempt):  # the first run loses 10 requests for good (no retries allowed)
        if len(failing) < 10 and key not in failing and _h(key, "b") % 3 == 0:
            failing.add(key)
        return "500" if key in failing else None

    with FakeOpenAI(fault, content=_build_reply) as srv:
        assert main([*args, "--base-url", srv.url]) == 2
    assert "10 requests failed" in capsys.readouterr().err and not (out / "search").exists()
    answered = len((out / "build_ledger.jsonl").read_text().splitlines())
    with FakeOpenAI(content=_build_reply) as srv2:
        assert main([*args, "--base-url", srv2.url]) == 0
    assert not set(srv.paid) & set(srv2.paid) and answered == len(srv.paid)
    # 30 facets x 2 statements x 3 topics; travel repeats work, so 4 questions per facet take
    # pairs 1-2 (work), 3-4 (travel, thrown away), 5-6 (food): 6 requests per facet
    assert len(set(srv.paid) | set(srv2.paid)) == 30 * 6
    bench = load_personality_bench(out, "search")
    test = load_personality_bench(out, "test")
    inv = load_inventory()
    for trait in TRAITS:
        qs = bench[trait] + test[trait]
        assert len(qs) == 6 * 4 and len(test[trait]) == 5  # 20% held out
        assert len({q["question"] for q in qs}) == len(qs)
        assert {q["tag"] for q in qs} == {it.facet_name for it in inv if it.domain == trait}
        assert all(q["BFI"] == trait and q["topic"] in ("work", "food") and q["sign"] in "+-" for q in qs)
    # a rerun pays for nothing and writes the same files
    before = {p: p.read_text() for p in out.glob("*/*.json")}
    with FakeOpenAI(content=_build_reply) as srv3:
        assert main([*args, "--base-url", srv3.url]) == 0
    assert srv3.requests == 0 and before == {p: p.read_text() for p in out.glob("*/*.json")}


def test_lens_judge_facets_are_the_ipip_neo_facets_of_the_shipped_inventory():
    from npti_lens.inputs.inventory import load_inventory
    from npti_lens.method.protocol import load_protocol

    items = load_inventory()
    for trait, names in load_protocol("lens").judge.factors.items():
        ours = sorted({(it.facet, it.facet_name.lower()) for it in items if it.domain == trait})
        assert ", ".join(n for _, n in ours) == names


def test_judge_runs_inside_a_running_event_loop(tmp_path, api_key):
    """As in a Jupyter notebook, where an event loop is already running."""
    import asyncio

    from npti_lens.judges.client import ChatConfig
    from npti_lens.judges.llm_judge import OpenAIJudge

    rows = _answers(tmp_path / "gen.jsonl", 3)
    with FakeOpenAI() as srv:
        judge = OpenAIJudge(tmp_path / "s", ChatConfig(model="fake-judge", base_url=srv.url, timeout=TIMEOUT))

        async def in_loop():
            return judge.score(rows)

        scored = asyncio.run(in_loop())
    assert [s["trait_rating"] for s in scored] == [
        rating_for(_messages(trait_messages(r["trait"], r["question"], r["answer"]))) for r in rows
    ]
