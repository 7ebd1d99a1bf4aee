"""`--engine vllm` from the command line: `npti induce` writes the rows `--engine tl` writes (plus
`engine`), and `npti search` the same answers, with the engine in run.json."""

from __future__ import annotations

import json

from npti_lens.vllm.engine import vllm_available
from tests.helpers import needs

pytestmark = needs("vLLM", vllm_available())

from npti_lens.core.constants import pole_name  # noqa: E402
from tests.helpers import QUESTIONS, build_tiny_vllm, random_pole_sets, write_data  # noqa: E402


def rows(path):
    return [{k: v for k, v in json.loads(x).items() if k != "engine"} for x in path.read_text().splitlines()]


def test_induce_and_search_on_either_engine(tmp_path):
    from npti_lens.cli import main
    from npti_lens.model.load import load_model, model_id
    from npti_lens.model.sites import mlp_sites

    folder = build_tiny_vllm("llama", tmp_path / "llama")
    sites = mlp_sites(load_model(str(folder)))
    for ns in random_pole_sets(model_id(load_model(str(folder))), sites.n_layers, sites.d_mlp):
        ns.save(tmp_path / "neurons" / pole_name(ns.trait, ns.pole))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    qdir, personas = write_data(tmp_path / "data", n=4)
    common = ["--model", str(folder), "--protocol", "lens", "--max-new-tokens", "16"]
    for engine in ("tl", "vllm"):
        assert main([
            "induce", *common, "--neurons", str(tmp_path / "neurons"), "--trait", "Extraversion", "--pole", "low",
            "--gamma", "4", "--keep-prob", "1.0", "--questions", str(tmp_path / "q.jsonl"),
            "--out", str(tmp_path / f"{engine}.jsonl"), "--engine", engine,
        ]) == 0  # fmt: skip
        assert main([
            "search", *common, "--questions", str(qdir), "--personas", str(personas), "--traits", "Extraversion",
            "--out", str(tmp_path / f"run_{engine}"), "--engine", engine,
        ]) == 0  # fmt: skip
    assert rows(tmp_path / "vllm.jsonl") == rows(tmp_path / "tl.jsonl")
    assert all(json.loads(x)["engine"] == "vllm" for x in (tmp_path / "vllm.jsonl").read_text().splitlines())
    for run in ("tl", "vllm"):
        assert json.loads((tmp_path / f"run_{run}" / "run.json").read_text())["engine"] == run
    for pole in ("high", "low"):
        answers = [
            rows(tmp_path / f"run_{e}" / "answers" / f"{pole_name('Extraversion', pole)}.jsonl")
            for e in ("tl", "vllm")
        ]
        assert answers[0] == answers[1]


def test_monitor_answers_questions_on_vllm_and_reads_them_as_on_tl(tmp_path):
    from npti_lens.cli import main
    from npti_lens.model.load import load_model, model_id
    from npti_lens.model.sites import mlp_sites

    folder = build_tiny_vllm("llama", tmp_path / "llama")
    model = load_model(str(folder))
    sites = mlp_sites(model)
    for ns in random_pole_sets(model_id(model), sites.n_layers, sites.d_mlp):
        ns.save(tmp_path / "neurons" / pole_name(ns.trait, ns.pole))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    got = {}
    for engine in ("tl", "vllm"):
        out = tmp_path / f"mon_{engine}"
        assert main([
            "monitor", "--questions", str(tmp_path / "q.jsonl"), "--model", str(folder), "--protocol", "lens",
            "--max-new-tokens", "12", "--neurons", str(tmp_path / "neurons"), "--trait", "Extraversion",
            "--pole", "high", "--out", str(out), "--engine", engine,
        ]) == 0  # fmt: skip
        got[engine] = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert len(got["tl"]) == len(QUESTIONS) and got["vllm"] == got["tl"]
    assert any(r["npti_answer"] for r in got["tl"])
