"""`npti serve`: vLLM's OpenAI server with NPTI inductions chosen per request, through the official
`openai` client; answers equal the TransformerLens loop's; bad requests are HTTP 400s and the server
keeps serving. Every test runs against an eager server and a `--compile` one."""

from __future__ import annotations

import json

import pytest

from npti_lens.vllm.engine import vllm_available
from tests.helpers import needs

pytestmark = needs("vLLM", vllm_available())

from npti_lens.core.constants import pole_name  # noqa: E402
from npti_lens.method.protocol import load_protocol  # noqa: E402
from npti_lens.model.generation import GenerateConfig  # noqa: E402
from npti_lens.workflows.answers import Condition, answer  # noqa: E402
from tests.helpers import QUESTIONS, npti_server, tiny_vllm_with_sets  # noqa: E402

GCFG = GenerateConfig(max_new_tokens=24, repetition_penalty=1.15)


@pytest.fixture(scope="module", params=[False, True], ids=["eager", "compiled"])
def server(request, tmp_path_factory):
    """The server eager and with --compile (vLLM's compilation; on a CPU Inductor, no CUDA graphs)."""
    root = tmp_path_factory.mktemp("serve")
    folder, tl, hi, lo = tiny_vllm_with_sets("llama", root / "llama")
    for ns in (hi, lo):
        ns.save(root / "sets" / pole_name(ns.trait, ns.pole))
    args = [
        "--model",
        str(folder),
        "--neurons",
        f"sets={root / 'sets'}",
        *(["--compile"] if request.param else []),
    ]
    with npti_server(args, root / "server.log", wait_s=300) as client:
        yield client, str(folder), tl, hi, lo


def ask(client, model: str, question: str, xargs: dict | None = None):
    body = {"repetition_penalty": GCFG.repetition_penalty, "return_token_ids": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=GCFG.max_new_tokens,
        extra_body=body,
    )


def served_ids(reply) -> list[int]:
    ids = list(reply.choices[0].token_ids)
    return ids[:-1] if reply.choices[0].finish_reason == "stop" else ids


def test_plain_and_induced_requests_equal_the_transformerlens_loop(server):
    client, model, tl, hi, lo = server
    cfg = load_protocol("npti").induce_config(gamma=3.0, keep_prob=1.0)
    cases = [
        (None, Condition.none()),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_gamma": 3.0, "npti_keep_prob": 1.0},
         Condition.npti([(hi, lo)], cfg)),
        ({"npti_neurons": "sets", "npti_trait": "Extraversion", "npti_pole": "low", "npti_gamma": 3, "npti_keep_prob": 1.0},
         Condition.npti([(lo, hi)], cfg)),
    ]  # fmt: skip
    got = []
    for xargs, cond in cases:
        ref = answer(tl, QUESTIONS[:4], cond, GCFG, protocol="lens", token_ids=True)
        ids = [served_ids(ask(client, model, q, xargs)) for q in QUESTIONS[:4]]
        assert ids == [r["answer_token_ids"] for r in ref], xargs
        got.append(ids)
    assert got[1] != got[0] and got[2] != got[0]


@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"npti_trait": "Extraverted", "npti_pole": "high"}, "npti_trait"),
        ({"npti_trait": "Extraversion", "npti_pole": "up"}, "npti_pole"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_gamma": "strong"}, "npti_gamma"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_neurons": "other"}, "npti_neurons"),
        ({"npti_trait": "Openness", "npti_pole": "high"}, "no Openness"),
        ({"npti_gama": 1.0}, "unknown npti argument"),
        ({"npti_gamma": 1.0}, "npti_trait and npti_pole"),
        # values that reached a forward once and took the engine down (seed) or could
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_seed": 2**62}, "npti_seed"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_seed": -1}, "npti_seed"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_gamma": 1e12}, "npti_gamma"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_keep_prob": 3}, "npti_keep_prob"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_positions": "prompt"}, "npti_positions"),
        ({"npti_trait": "Extraversion", "npti_pole": "high", "npti_neurons": ""}, "npti_neurons"),
        ({"npti_induction": "sets/Extraversion/sideways"}, "npti_pole"),
        ({"npti_record": "mine"}, "npti_record"),
    ],
)
def test_a_bad_request_is_a_400_and_the_server_keeps_serving(server, xargs, message):
    import openai

    client, model, *_ = server
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, model, QUESTIONS[0], xargs)
    assert err.value.status_code == 400 and message in str(err.value)
    assert ask(client, model, QUESTIONS[0]).choices[0].message.content is not None
    induced = {"npti_trait": "Extraversion", "npti_pole": "high", "npti_seed": 2**32 - 1}
    assert ask(client, model, QUESTIONS[0], induced).choices[0].message.content is not None


def test_npti_score_talks_to_the_server(server, tmp_path, monkeypatch, capsys):
    """`npti score --judge openai --base-url` against the server: each answer gets a judge request and
    the server's reply is kept (the tiny model writes no [[rating]]: counted, not invented)."""
    from npti_lens.cli import main
    from npti_lens.workflows.answers import write_answers

    client, model, tl, *_ = server
    rows = answer(tl, QUESTIONS[:2], Condition.none("Extraversion", "high"), GCFG, protocol="lens")
    write_answers(tmp_path / "gen.jsonl", rows)
    monkeypatch.setenv("OPENAI_API_KEY", "none")
    code = main([
        "score", str(tmp_path / "gen.jsonl"), "--out", str(tmp_path / "s"), "--judge", "openai",
        "--model", model, "--base-url", str(client.base_url), "--max-tokens", "8",
    ])  # fmt: skip
    scored = [json.loads(x) for x in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 2
    for r in scored:  # the server answered both judge prompts of every row
        assert isinstance(r["trait_reply"], str) and isinstance(r["fluency_reply"], str), r.get("judge_error")
        assert r["trait_rating"] is not None or "has no rating" in r["judge_error"]
    # no rating in the replies: npti score says so and exits 2 (a rerun retries only those)
    assert code == 2 and "2 of 2 answers lack a rating" in capsys.readouterr().err


def test_the_nested_npti_object_is_the_flat_xargs(server):
    import openai

    client, model, *_ = server
    flat = {"npti_trait": "Extraversion", "npti_pole": "high", "npti_gamma": 3.0, "npti_keep_prob": 1.0}
    nested = {"trait": "Extraversion", "pole": "high", "gamma": 3.0, "keep_prob": 1.0}
    for q in QUESTIONS[:2]:
        a = ask(client, model, q, flat)
        b = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=GCFG.max_new_tokens,
            extra_body={"repetition_penalty": GCFG.repetition_penalty, "return_token_ids": True, "npti": nested},
        )  # fmt: skip
        assert served_ids(a) == served_ids(b)
    for bad, word in (
        ("low", '"npti" must be an object'),
        ({"gamma": "x", "trait": "Openness", "pole": "low"}, "npti_gamma"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=2,
                extra_body={"npti": bad},
            )
        assert word in str(err.value)
    assert ask(client, model, QUESTIONS[0]).choices[0].message.content is not None


def test_nested_to_xargs():
    from npti_lens.vllm.check import nested_to_xargs

    body = json.dumps(
        {"model": "m", "npti": {"trait": "Openness", "pole": "low", "activate": False}}
    ).encode()
    assert json.loads(nested_to_xargs(body))["vllm_xargs"] == {
        "npti_trait": "Openness",
        "npti_pole": "low",
        "npti_activate": 0,
    }
    assert (
        nested_to_xargs(b'{"model": "m"}') == b'{"model": "m"}'
        and nested_to_xargs(b"not json") == b"not json"
    )
    with pytest.raises(ValueError, match="twice"):
        nested_to_xargs(json.dumps({"npti": {"gamma": 1}, "vllm_xargs": {"npti_gamma": 2}}).encode())
