"""Protocols: the released code's strings byte for byte, what the model and the judge receive, the
keep rule and clamp order, records in every artifact, one-line errors for bad protocols."""

from __future__ import annotations

import json

import pytest
import torch
from openai_server import FakeOpenAI

from npti_lens.cli import main
from npti_lens.core.constants import POLES, TRAITS
from npti_lens.inputs.questions import draw_personas
from npti_lens.method.induction import InduceConfig, induce
from npti_lens.method.neurons import NeuronSet, load_neuron_sets
from npti_lens.method.protocol import PROTOCOL_DIR, load_protocol, shipped
from npti_lens.model.sites import mlp_sites
from tests.helpers import PERSONAS, QUESTIONS, REFERENCE, write_data

needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="needs ../shared/reference/npti-original")
GEN = ["--max-new-tokens", "3", "--batch-size", "4", "--limit", "3"]


def _ref() -> dict:
    return json.loads((REFERENCE / "protocol.json").read_text(encoding="utf-8"))


def _chat(tok, content: str) -> str:
    """What the released code gives the model: one user message, generation prompt, no system."""
    return tok.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def _rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@needs_reference
def test_npti_protocol_strings_equal_the_released_code_byte_for_byte():
    ref, npti = _ref(), json.loads((PROTOCOL_DIR / "npti.json").read_text(encoding="utf-8"))
    st = npti["stages"]
    assert st["search"]["user"] == ref["search"]["template"]
    assert st["neutral"]["user"] == ref["induce"]["template"]
    assert st["simple"]["user"] == ref["baseline_simple"]["template"]
    assert st["p2"]["user"] == ref["baseline_simple"]["template"]  # as the released loop ran P2
    assert st["p2-as-written"]["user"] == ref["baseline_p2_template_as_written"]
    assert all(s["system"] is None for s in st.values())
    assert npti["adjectives"] == ref["baseline_simple"]["adjectives"]
    for stage, key in (("search", "search"), ("neutral", "induce"), ("simple", "baseline_simple")):
        want = ref[key]["sampling"]
        got = st[stage]["sampling"]
        assert (got["max_new_tokens"], got["repetition_penalty"], got["temperature"]) == (
            want["max_tokens"],
            want["repetition_penalty"],
            want["temperature"],
        )
    judge = npti["judge"]
    assert judge["trait"] == ref["judge"]["trait_template"]
    assert judge["fluency"] == ref["judge"]["fluency_template"]
    assert judge["factors"] == ref["judge"]["factors"] and judge["system"] is None
    assert npti["induction"] == {"keep": "bernoulli", "clamp_order": "before", "clamp_layers": "targets"}
    assert npti["gpu_dtype"] == "bfloat16"


@needs_reference
def test_the_model_receives_the_released_templates(tiny_dirs, tmp_path):
    """generate, induce, both P2 forms, simple and search, 3 questions x 2 personas, chat template."""
    ref = _ref()
    qdir, personas = write_data(tmp_path)
    model, qfile = str(tiny_dirs["llama"]), str(qdir / "Extraversion.json")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    questions = QUESTIONS[:3]

    assert (
        main(["generate", "--model", model, "--questions", qfile, "--out", str(tmp_path / "g.jsonl"), *GEN])
        == 0
    )
    rows = _rows(tmp_path / "g.jsonl")
    assert [r["prompt"] for r in rows] == [
        _chat(tok, ref["induce"]["template"].format(question=q)) for q in questions
    ]
    assert {r["protocol"] for r in rows} == {"npti"} and len({r["protocol_hash"] for r in rows}) == 1

    common = ["--model", model, "--trait", "Extraversion", "--pole", "low", "--questions", qfile, *GEN]
    assert main(["baseline", "--method", "simple", *common, "--out", str(tmp_path / "s.jsonl")]) == 0
    phrase = ref["baseline_simple"]["adjectives"]["Extraversion_reversed"]
    assert [r["prompt"] for r in _rows(tmp_path / "s.jsonl")] == [
        _chat(tok, ref["baseline_simple"]["template"].format(personality=phrase, question=q))
        for q in questions
    ]
    descs = [p["Extraversion_reversed"] for p in PERSONAS]
    drawn = draw_personas(descs, 3, seed=0, trait="Extraversion", pole="low")
    assert len(set(drawn)) == 2  # both personas are used
    for method, template in (
        ("p2", ref["baseline_simple"]["template"]),
        ("p2-as-written", ref["baseline_p2_template_as_written"]),
    ):
        out = tmp_path / f"{method}.jsonl"
        assert (
            main(["baseline", "--method", method, *common, "--personas", str(personas), "--out", str(out)])
            == 0
        )
        rows = _rows(out)
        assert [r["prompt"] for r in rows] == [
            _chat(tok, template.format(personality=d, question=q))
            for d, q in zip(drawn, questions, strict=True)
        ]
        assert {r["method"] for r in rows} == {method}

    run = tmp_path / "run"
    assert main(
        ["search", "--model", model, "--questions", str(qdir), "--personas", str(personas), "--out", str(run),
         "--traits", "Extraversion", *GEN, "--limit", "7"]
    ) == 0  # fmt: skip
    for pole in POLES:
        rows = _rows(run / "answers" / f"Extraversion_{pole}.jsonl")
        assert len({r["persona"] for r in rows}) == 2
        assert [r["prompt"] for r in rows] == [
            _chat(tok, ref["search"]["template"].format(personality=r["persona"], question=r["question"]))
            for r in rows
        ]
    cfg = json.loads((run / "run.json").read_text())
    assert cfg["protocol"] == "npti" and cfg["protocol_hash"] == load_protocol("npti").hash
    assert cfg["generate"]["max_new_tokens"] == 3 and cfg["generate"]["repetition_penalty"] == 1.1

    neurons = tmp_path / "neurons"
    assert main(["select", str(run), "--out", str(neurons), "--min-neurons", "5"]) == 0
    for ns in load_neuron_sets(neurons).values():
        assert ns.provenance == load_protocol("npti").record()
        assert json.loads((neurons / ns.name / "cfg.json").read_text())["protocol"] == "npti"
    out = tmp_path / "i.jsonl"
    assert main(["induce", "--neurons", str(neurons), *common, "--out", str(out)]) == 0
    assert [r["prompt"] for r in _rows(out)] == [
        _chat(tok, ref["induce"]["template"].format(question=q)) for q in questions
    ]


def test_sampling_comes_from_the_protocol_unless_a_flag_says_otherwise():
    npti = load_protocol("npti")
    assert npti.generate_config("search").repetition_penalty == 1.1
    assert npti.generate_config("search").max_new_tokens == 500
    assert npti.generate_config("neutral").repetition_penalty == 1.15
    assert npti.generate_config("neutral").max_new_tokens == 400
    assert npti.generate_config("neutral", max_new_tokens=7, batch_size=3).max_new_tokens == 7
    assert npti.generate_config("neutral", max_new_tokens=None).max_new_tokens == 400
    assert npti.induce_config().keep == "bernoulli"
    assert load_protocol("lens").induce_config(gamma=2.0).keep == "exact"
    assert load_protocol(None, model="organism").name == "organism"
    assert set(shipped()) == {"npti", "lens", "organism"}


def test_lens_protocol_keeps_npti_lens_0_1_prompts(tiny_dirs):
    from npti_lens.inputs.prompts import build, persona_system
    from npti_lens.model.load import load_model

    lens = load_protocol("lens")
    for family in ("llama", "gpt2"):  # with and without a chat template
        tok = load_model(str(tiny_dirs[family])).tokenizer
        q = QUESTIONS[0]
        assert lens.render(tok, "neutral", question=q) == build(tok, q).text
        assert (
            lens.render(tok, "search", personality="you love a party", question=q)
            == build(tok, q, persona_system("you love a party")).text
        )
        assert (
            lens.render(tok, "simple", personality=lens.adjective("Extraversion", "low"), question=q)
            == build(tok, q, "You are an introverted person.").text
        )
    org = load_protocol("organism")
    for t in TRAITS:
        for p in POLES:
            from npti_lens.organism import corpus

            assert org.adjective(t, p) == corpus.simple_persona(t, p)


def test_protocol_hash_ignores_name_and_description_but_not_content(tmp_path):
    content = json.loads((PROTOCOL_DIR / "npti.json").read_text())
    content.update(name="mine", description="my copy")
    (tmp_path / "mine.json").write_text(json.dumps(content))
    mine = load_protocol(str(tmp_path / "mine.json"))
    assert mine.name == "mine" and mine.hash == load_protocol("npti").hash
    content["stages"]["neutral"]["sampling"]["max_new_tokens"] = 100
    (tmp_path / "other.json").write_text(json.dumps(content))
    assert load_protocol(str(tmp_path / "other.json")).hash != mine.hash


def test_judge_requests_are_the_released_templates(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    npti = json.loads((PROTOCOL_DIR / "npti.json").read_text(encoding="utf-8"))["judge"]
    if REFERENCE.is_dir():  # the package's copy is the file's (checked byte for byte above too)
        assert npti["trait"] == _ref()["judge"]["trait_template"]
    rows = [
        {"question": "How do you spend a free day?", "answer": "I call friends and go out.", "trait": "Extraversion", "pole": "low"},
        {"question": "What do you do with new ideas?", "answer": "I try them at once.", "trait": "Openness", "pole": "high"},
    ]  # fmt: skip
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAI() as srv:
        assert (
            main(
                ["score", str(gen), "--out", str(tmp_path / "s"), "--judge", "openai", "--base-url", srv.url]
            )
            == 0
        )
    sent = sorted((json.dumps(m), srv.bodies[k]) for k, m in srv.messages.items())
    want = []
    for r in rows:
        t = npti["trait"].format(
            BFI=r["trait"], factors=npti["factors"][r["trait"]], question=r["question"], answer=r["answer"]
        )
        want += [
            [{"role": "user", "content": t}],
            [{"role": "user", "content": npti["fluency"].format(answer=r["answer"])}],
        ]
    assert [json.loads(m) for m, _ in sent] == sorted(want, key=json.dumps)
    assert all(b["temperature"] == 0 and b["model"] == "gpt-4o" for _, b in sent)
    scored = _rows(tmp_path / "s" / "scores.jsonl")
    for s in scored:
        # the rating as released (the level of the trait), the raw reply, the pole-turned score derived
        assert s["trait_reply"].endswith(f"[[{s['trait_rating']}]]")
        assert s["trait_score"] == (6 - s["trait_rating"] if s["pole"] == "low" else s["trait_rating"])
        assert s["judge_protocol"] == "npti" and s["judge_protocol_hash"] == load_protocol("npti").hash


def test_npti_rating_reads_the_last_double_bracket():
    judge = load_protocol("npti").judge
    assert judge.rating("Warm and outgoing. [[4]]") == 4
    assert judge.rating("Rating: [[2]] then Rating: [[5]]") == 5
    assert judge.rating("Rating: 4") is None and judge.rating("[[6]]") is None
    lens = load_protocol("lens").judge
    assert lens.rating("Warm. [[4]]") is None and lens.rating("rating: **[[ 5 ]]") == 5


# ----- keep rule and clamp ------------------------------------------------------------------------


def _set(model, trait, pole, rows) -> NeuronSet:
    sites = mlp_sites(model)
    layer = torch.tensor([r[0] for r in rows])
    return NeuronSet(
        trait=trait,
        pole=pole,
        model=str(model.cfg.model_name).rstrip("/").split("/")[-1],
        n_layers=sites.n_layers,
        d_mlp=sites.d_mlp,
        layer=layer,
        index=torch.tensor([r[1] for r in rows]),
        diff=torch.full((len(rows),), 0.3, dtype=torch.float64),
        p_active=torch.full((len(rows),), 0.5, dtype=torch.float64),
        q95=torch.full((len(rows),), 1.0, dtype=torch.float64),
    )


def _post_of(model, ids, icfg=None, pairs=None):
    """hook_post of every layer for one forward, with or without an induction (all positions)."""
    sites = mlp_sites(model)
    got = {}

    def grab(layer):
        def fn(x, hook):
            got[layer] = x.detach().clone()

        return fn

    hooks = [(sites.post(layer), grab(layer)) for layer in range(sites.n_layers)]
    from npti_lens.model.sites import hooks_added

    with torch.inference_mode():
        if pairs is None:
            with hooks_added(model, hooks):
                model.original_model(input_ids=ids)
        else:
            with induce(model, pairs, icfg), hooks_added(model, hooks):
                model.original_model(input_ids=ids)
    return got


def test_bernoulli_keep_shares_090_and_differs_per_layer_and_forward(tiny_models):
    model = tiny_models["gpt2"]  # hook_post is the activation itself: a kept neuron moves by its shift
    sites = mlp_sites(model)
    rows = [(layer, i) for layer in range(sites.n_layers) for i in range(0, 60, 3)]
    high = _set(model, "Extraversion", "high", rows)
    ids = torch.tensor([[1, 5, 6, 7]])
    base = _post_of(model, ids)
    idx = {layer: torch.tensor([i for la, i in rows if la == layer]) for layer in range(sites.n_layers)}
    icfg = InduceConfig(gamma=1.0, keep="bernoulli", keep_prob=0.9, positions="all", seed=3)
    masks, stash = [], {}

    def on_pre(layer):
        def fn(x, hook):  # the activation as the model computes it, before the induction edits it
            stash[layer] = sites.act_fns[layer](x[0, -1, idx[layer]])

        return fn

    def on_post(layer):
        def fn(x, hook):
            masks.append((x[0, -1, idx[layer]] - stash.pop(layer)).abs() > 1e-4)

        return fn

    from npti_lens.model.sites import hooks_added

    recorders = [(sites.pre(la), on_pre(la)) for la in range(sites.n_layers)]
    recorders += [(sites.post(la), on_post(la)) for la in range(sites.n_layers)]
    with torch.inference_mode(), induce(model, [(high, None)], icfg), hooks_added(model, recorders):
        for _ in range(2000):
            model.original_model(input_ids=ids)
    kept = torch.stack(masks).float()
    assert abs(float(kept.mean()) - 0.90) <= 0.01
    per_forward = kept.reshape(2000, sites.n_layers, -1)
    assert not torch.equal(per_forward[0], per_forward[1])  # new draw per forward
    assert not torch.equal(per_forward[:, 0], per_forward[:, 1])  # and per layer
    # every target neuron that moved moved by exactly its shift: 1.0 * sigmoid(10 * (0.3 - 0.15))
    shift = float(torch.sigmoid(torch.tensor(1.5)))
    got = _post_of(model, ids, icfg, [(high, None)])  # layer 0: its input is not edited upstream
    delta = got[0][0, -1, idx[0]] - base[0][0, -1, idx[0]]
    assert all(abs(float(d)) < 1e-5 or abs(float(d) - shift) < 1e-5 for d in delta)
    # the exact rule shifts floor(0.9 * 20) = 18 every forward
    for seed in range(5):
        exact = InduceConfig(gamma=1.0, keep="exact", keep_prob=0.9, positions="all", seed=seed)
        got = _post_of(model, ids, exact, [(high, None)])
        assert int(((got[0] - base[0])[0, -1, idx[0]].abs() > 1e-4).sum()) == 18


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_clamp_before_shift_in_target_layers_equals_a_direct_edit(family, tiny_models, tiny_dirs):
    """As released: a = min(a, 0) on the opposite pole first, then the shift, only in layers with targets."""
    from tests.helpers import hf_reference

    model = tiny_models[family]
    # target neurons in layer 0 and 1; opposite neurons in layers 0 (two shared with the target) and 2
    high = _set(model, "Extraversion", "high", [(0, 1), (0, 4), (1, 2), (1, 7)])
    low = _set(model, "Extraversion", "low", [(0, 1), (0, 9), (0, 11), (2, 3), (2, 5)])
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    icfg = InduceConfig(
        gamma=1.5, keep_prob=1.0, positions="all", clamp_order="before", clamp_layers="targets"
    )
    with torch.inference_mode(), induce(model, [(high, low)], icfg):
        logits = model.original_model(input_ids=ids).logits

    hf = hf_reference(tiny_dirs[family])
    shift = 1.5 * float(torch.sigmoid(torch.tensor(1.5)))
    tgt = {0: [1, 4], 1: [2, 7]}
    opp = {0: [1, 9, 11]}  # layer 2 holds no target: its opposite neurons are left alone

    def edit(layer, a):
        a = a.clone()
        if layer in opp:
            a[..., opp[layer]] = a[..., opp[layer]].clamp(max=0)
        if layer in tgt:
            a[..., tgt[layer]] += shift
        return a

    handles = []
    blocks = hf.model.layers if family == "llama" else hf.transformer.h
    for layer, block in enumerate(blocks):
        if family == "llama":
            mlp = block.mlp
            act = mlp.act_fn

            def fwd(x, mlp=mlp, act=act, layer=layer):
                return mlp.down_proj(edit(layer, act(mlp.gate_proj(x))) * mlp.up_proj(x))

            mlp.forward = fwd
        else:
            handles.append(block.mlp.act.register_forward_hook(lambda m, i, o, layer=layer: edit(layer, o)))
    with torch.inference_mode():
        want = hf(input_ids=ids).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    # clamping after the shift differs where the sets share a neuron
    after = InduceConfig(gamma=1.5, keep_prob=1.0, positions="all", clamp_order="after", clamp_layers="all")
    with torch.inference_mode(), induce(model, [(high, low)], after):
        other = model.original_model(input_ids=ids).logits
    assert not torch.allclose(other, want, atol=1e-4)


# ----- bad protocols ---------------------------------------------------------------------------


def _cli_err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_protocols_are_one_line_errors(tiny_dirs, tmp_path, capsys):
    qdir, personas = write_data(tmp_path)
    base = [
        "generate",
        "--model",
        str(tiny_dirs["llama"]),
        "--questions",
        str(qdir / "Extraversion.json"),
        *GEN,
    ]
    err = _cli_err(capsys, [*base, "--out", str(tmp_path / "a.jsonl"), "--protocol", "nope"])
    assert "unknown protocol 'nope'" in err and "npti" in err

    content = json.loads((PROTOCOL_DIR / "npti.json").read_text())
    del content["stages"]["neutral"]["sampling"]
    (tmp_path / "missing.json").write_text(json.dumps(content))
    err = _cli_err(
        capsys, [*base, "--out", str(tmp_path / "b.jsonl"), "--protocol", str(tmp_path / "missing.json")]
    )
    assert "missing.json" in err and "missing field 'sampling'" in err

    content = json.loads((PROTOCOL_DIR / "npti.json").read_text())
    content["stages"]["neutral"]["user"] = "Tell me about yourself."
    (tmp_path / "noq.json").write_text(json.dumps(content))
    err = _cli_err(
        capsys, [*base, "--out", str(tmp_path / "c.jsonl"), "--protocol", str(tmp_path / "noq.json")]
    )
    assert "stages.neutral" in err and "{question}" in err

    content = json.loads((PROTOCOL_DIR / "npti.json").read_text())
    del content["stages"]["p2-as-written"]
    (tmp_path / "nop2.json").write_text(json.dumps(content))
    err = _cli_err(
        capsys,
        ["baseline", "--method", "p2-as-written", "--model", str(tiny_dirs["llama"]), "--trait", "Extraversion",
         "--pole", "low", "--questions", str(qdir / "Extraversion.json"), "--personas", str(personas),
         "--out", str(tmp_path / "d.jsonl"), "--protocol", str(tmp_path / "nop2.json"), *GEN],
    )  # fmt: skip
    assert "defines no 'p2-as-written' stage" in err
    (tmp_path / "x.jsonl").write_text(
        json.dumps({"question": "q", "answer": "a", "trait": "Openness"}) + "\n"
    )
    err = _cli_err(capsys, ["score", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "s"), "--judge", "openai",
                            "--protocol", "organism", "--base-url", "http://127.0.0.1:9/v1"])  # fmt: skip
    assert "defines no judge prompts" in err and not (tmp_path / "s").exists()
    (tmp_path / "broken.json").write_text("{")
    err = _cli_err(
        capsys, [*base, "--out", str(tmp_path / "e.jsonl"), "--protocol", str(tmp_path / "broken.json")]
    )
    assert "not valid JSON" in err
    assert not any((tmp_path / f"{c}.jsonl").exists() for c in "abcde")
