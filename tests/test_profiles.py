"""Administering an inventory: option probabilities vs a plain forward, inductions, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from npti_lens.cli import main
from npti_lens.core.errors import UserError
from npti_lens.evaluation.profiles import (
    InventoryConfig,
    administer,
    item_prompt,
    option_probs,
    option_token_ids,
    statement,
)
from npti_lens.inputs.inventory import Item, load_inventory
from npti_lens.inputs.prompts import build, tokenize
from npti_lens.inputs.questions import SAMPLE_PERSONAS, load_personas
from npti_lens.method.induction import InduceConfig, induce
from tests.helpers import SHARED, hf_reference
from tests.test_induction import two_sets

IPIP120 = SHARED / "reference" / "ipip-neo-120" / "items.csv"


def test_statement_and_prompt_text():
    it = Item("1", "Worry about things", "Neuroticism", 1, "Anxiety", "+")
    assert statement(it) == "I worry about things."
    assert statement(Item("2", "I like art.", "Openness", 2, "Artistic interests", "+")) == "I like art."
    fwd, rev = item_prompt(it), item_prompt(it, reversed_scale=True)
    assert "1 = very inaccurate" in fwd and "5 = very accurate" in fwd
    assert "1 = very accurate" in rev and "5 = very inaccurate" in rev
    # the default layout ends with the statement; the other one ends with the instruction
    assert fwd.endswith('Statement: "I worry about things."')
    old = item_prompt(it, layout="statement-first")
    assert old.endswith("Reply with the number only.") and old.index("Statement") < old.index("1 = very")
    assert sorted(fwd.split("\n")) == sorted(old.split("\n"))  # the same lines, in another order
    with pytest.raises(UserError, match="--layout: 'sideways' is not one of scale-first, statement-first"):
        InventoryConfig(layout="sideways").check()


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # with and without a chat template
def test_option_probs_equal_a_plain_forward(family, tiny_models, tiny_dirs):
    model = tiny_models[family]
    ids = option_token_ids(model.tokenizer)
    assert all(len(x) == 1 for x in ids)  # "1" ... "5" are words of the test tokenizer
    items = load_inventory()[:7]
    prompts = [build(model.tokenizer, item_prompt(it)).token_ids for it in items]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    got = option_probs(model, prompts, ids, batch_size=4)
    hf = hf_reference(tiny_dirs[family])
    for row, p in enumerate(prompts):
        with torch.no_grad():
            probs = torch.softmax(hf(torch.tensor([p])).logits[0, -1].float(), -1)
        want = [float(probs[x].sum()) for x in ids]
        assert got[row] == pytest.approx(want, abs=1e-5)


def test_induction_moves_the_answer_and_leaves_no_trace(tiny_models):
    model = tiny_models["llama"]
    items = load_inventory()[:6]
    cfg = InventoryConfig(respondents=0)
    base = administer(model, items, cfg)
    high, low = two_sets(model)
    with induce(model, [(high, low)], InduceConfig(gamma=3.0)):  # default positions: the answer position
        moved = administer(model, items, cfg, condition="ind")
    after = administer(model, items, cfg)
    assert np.abs(moved.p_forward - base.p_forward).max() > 1e-3
    np.testing.assert_array_equal(after.p_forward, base.p_forward)
    np.testing.assert_array_equal(after.p_reversed, base.p_reversed)


def test_respondents_give_alpha(tiny_models):
    model = tiny_models["llama"]
    items = [it for it in load_inventory() if it.domain == "Extraversion"]
    adm = administer(model, items, InventoryConfig(respondents=4))
    assert adm.respondents.shape == (4, 12)
    assert len({tuple(r) for r in adm.respondents.round(6)}) == 4  # persona prompts change the answers


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _inventory_args(model_dir, out, *, respondents, n_boot):
    return ["inventory", "--model", str(model_dir), "--out", str(out), "--respondents", str(respondents),
            "--n-boot", str(n_boot)]  # fmt: skip


def test_cli_inventory_with_and_without_induction(tiny_dirs, tiny_models, tmp_path, capsys):
    high, low = two_sets(tiny_models["llama"])
    for s in (high, low):
        s.save(tmp_path / "n" / s.name)
    out = tmp_path / "inv"
    args = _inventory_args(tiny_dirs["llama"], out, respondents=3, n_boot=200)
    assert (
        main(
            [
                *args,
                "--neurons",
                str(tmp_path / "n"),
                "--trait",
                "Extraversion",
                "--pole",
                "high",
                "--gamma",
                "3",
            ]
        )
        == 0
    )
    items, domains = _read(out / "items.csv"), _read(out / "domains.csv")
    assert len(items) == 2 * 60 and {r["condition"] for r in items} == {"none", "Extraversion_high gamma=3"}
    assert [r["domain"] for r in domains[:5]] == [
        "Neuroticism",
        "Extraversion",
        "Openness",
        "Agreeableness",
        "Conscientiousness",
    ]
    for col in ("domain", "score", "alpha", "ci_low", "ci_high", "option_mass", "shift"):
        assert col in domains[0]
    for r in domains:
        assert float(r["ci_low"]) <= float(r["score"]) <= float(r["ci_high"]) and 1 <= float(r["score"]) <= 5
    assert all(r["shift"] == "" for r in domains[:5]) and all(r["shift"] != "" for r in domains[5:])
    assert (out / "profile.png").stat().st_size > 0 and (out / "profile.pdf").exists()
    assert "Extraversion_high gamma=3" in capsys.readouterr().out
    assert main(args) == 2  # never over an earlier run
    for flag in ("--n-boot", "--batch-size"):
        assert main([*args, "--overwrite", flag, "0"]) == 2
        assert f"{flag}: 0 must be at least 1" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--trait", "Extraversion"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--layout", "sideways"]) == 2
    assert "--layout: 'sideways' is not one of scale-first, statement-first" in capsys.readouterr().err


def test_cli_inventory_on_the_organism(tmp_path, capsys):
    out = tmp_path / "org"
    assert (
        main(["inventory", "--model", "organism", "--out", str(out), "--respondents", "0", "--n-boot", "100"])
        == 0
    )
    domains = _read(out / "domains.csv")
    # its word tokenizer has no tokens 1-5: no mass on the options, no rating, and a warning says so
    assert all(float(r["option_mass"]) == 0.0 for r in domains)
    assert "not answering with a number" in capsys.readouterr().out


@pytest.mark.skipif(not IPIP120.is_file(), reason="../shared reference data absent")
def test_cli_inventory_with_ipip_neo_120(tiny_dirs, tmp_path):
    out = tmp_path / "ipip"
    args = ["inventory", "--model", str(tiny_dirs["gpt2"]), "--inventory", str(IPIP120), "--out", str(out)]
    assert main([*args, "--respondents", "2", "--n-boot", "100"]) == 0
    assert len(_read(out / "items.csv")) == 120 and len(_read(out / "facets.csv")) == 30


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_cached_persona_prefix_equals_full_forwards(family, tiny_models):
    from npti_lens.evaluation.profiles import MIN_SHARED_PREFIX, shared_prefix
    from npti_lens.inputs.prompts import persona_system

    model = tiny_models[family]
    ids = option_token_ids(model.tokenizer)
    items = load_inventory()[:9]
    system = persona_system("you love a party and talk with people")
    prompts = [build(model.tokenizer, item_prompt(it), system).token_ids for it in items]
    prompts += [
        build(model.tokenizer, item_prompt(it, reversed_scale=True), system).token_ids for it in items
    ]
    assert shared_prefix(prompts) >= MIN_SHARED_PREFIX  # the cached path is the one taken
    assert len({len(p) for p in prompts}) > 1  # left padding of the suffixes is exercised
    full = option_probs(model, prompts, ids, batch_size=4, reuse_prefix=False)
    cached = option_probs(model, prompts, ids, batch_size=4)
    np.testing.assert_allclose(cached, full, atol=1e-5)
    # one order alone (as administer_once asks): the whole item prompt but the statement is shared
    forward = prompts[: len(items)]
    n = shared_prefix(forward)
    shared_text = model.tokenizer.decode(forward[0][:n])
    # the scale's lines (every "accurate" of the prompt) are all in the shared prefix
    assert shared_text.count("accurate") == model.tokenizer.decode(forward[0]).count("accurate") >= 6
    for p in forward:  # what runs per item: its statement and the template's end, no scale, no instruction
        own = model.tokenizer.decode(p[n:])
        assert "accurate" not in own and "with the" not in own
    np.testing.assert_allclose(option_probs(model, forward, ids, batch_size=3), full[: len(items)], atol=1e-5)
    high, low = two_sets(model)
    for cfg in (
        InduceConfig(gamma=4.0, keep_prob=0.9),
        InduceConfig(gamma=4.0, keep_prob=1.0, positions="all"),
    ):
        with induce(model, [(high, low)], cfg):
            a = option_probs(model, prompts, ids, batch_size=4, reuse_prefix=False)
        with induce(model, [(high, low)], cfg):
            b = option_probs(model, prompts, ids, batch_size=4)
        assert np.abs(a - full).max() > 1e-3, "the induction must move the answer"
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_shared_prefix_leaves_every_prompt_a_token():
    from npti_lens.evaluation.profiles import shared_prefix

    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix([[9], [1, 2]]) == 0


def test_prompt_frames_ask_every_item_through_the_protocols_stage(tiny_models):
    from npti_lens.evaluation.profiles import measure, prompt_frame
    from npti_lens.method.protocol import load_protocol

    model = tiny_models["llama"]
    proto = load_protocol("npti")
    items = [it for it in load_inventory() if it.domain == "Extraversion"][:6]
    ids = option_token_ids(model.tokenizer)
    simple = prompt_frame("simple", "Extraversion", "high", proto, None)
    p2 = prompt_frame("p2", "Extraversion", "low", proto, None)
    assert simple.personality == proto.adjective("Extraversion", "high")
    assert p2.personality in load_personas(SAMPLE_PERSONAS, ["Extraversion"])[("Extraversion", "low")]
    assert prompt_frame("p2", "Extraversion", "low", proto, None, seed=0) == p2  # seeded: the same draw
    cfg = InventoryConfig(respondents=2, n_boot=50)
    result = measure(model, items, cfg, frames={"simple": simple, "p2": p2})
    none, *framed = result.administrations
    assert [a.condition for a in framed] == ["simple", "p2"] and none.respondents is not None
    for adm, frame in zip(framed, (simple, p2), strict=True):
        assert adm.respondents is None  # no persona respondents under a persona prompt: no alpha
        for rev, got in ((False, adm.p_forward), (True, adm.p_reversed)):
            # oracle: the exact text the released template gives, one full forward per item
            texts = [proto.render(model.tokenizer, frame.stage, personality=frame.personality,
                                  question=item_prompt(it, reversed_scale=rev)) for it in items]  # fmt: skip
            want = option_probs(model, [tokenize(model.tokenizer, t) for t in texts], ids, reuse_prefix=False)
            np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.abs(adm.p_forward - none.p_forward).max() > 1e-3  # the frame changes what is asked
    rows = result.domain_rows()
    assert all(np.isnan(r["alpha"]) for r in rows if r["condition"] != "none")
    assert all(np.isfinite(r["shift"]) for r in rows if r["condition"] != "none")  # paired with none's
    with pytest.raises(UserError, match="--method: 'vibes' is not one of npti, vector, simple, p2"):
        prompt_frame("vibes", "Extraversion", "high", proto, None)


def test_cli_inventory_prompt_baselines(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "inv"
    args = _inventory_args(tiny_dirs["llama"], out, respondents=2, n_boot=50)
    assert main([*args, "--method", "p2", "--trait", "Agreeableness", "--pole", "low"]) == 0
    domains = _read(out / "domains.csv")
    assert {r["condition"] for r in domains} == {"none", "Agreeableness_low p2"}
    saved = json.loads((out / "cfg.json").read_text())["prompt_conditions"]["Agreeableness_low p2"]
    assert saved["stage"] == "p2"  # the drawn description is on record, as the model read it
    assert saved["personality"] in load_personas(SAMPLE_PERSONAS, ["Agreeableness"])[("Agreeableness", "low")]
    assert all(r["shift"] != "" for r in domains if r["condition"] != "none")
    capsys.readouterr()
    for extra, message in (
        (["--method", "p2"], "--method p2: give --trait and --pole, and no --neurons"),
        (["--method", "simple", "--trait", "Agreeableness", "--pole", "low", "--neurons", str(tmp_path)],
         "--method simple: give --trait and --pole, and no --neurons"),
        (["--method", "p2", "--trait", "Agreeableness,Openness", "--pole", "low"], "one trait pole at a time"),
        (["--method", "vibes", "--neurons", str(tmp_path), "--trait", "Openness", "--pole", "low"],
         "--method: 'vibes' is not one of npti, vector, simple, p2"),
    ):  # fmt: skip
        assert main([*args, "--overwrite", *extra]) == 2
        assert message in capsys.readouterr().err
