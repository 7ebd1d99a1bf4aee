"""The protocol of a run: every prompt template, sampling setting, judge prompt and induction rule.

One named bundle, so that a number can be traced to exactly what produced it. Shipped:

- `npti`: the released code of the paper (RUCAIBox/NPTI), its strings byte for byte. The default.
- `lens`: npti_lens 0.1's own prompts (system messages, the bare question), kept for comparison.
- `organism`: the shipped model organism's; its word vocabulary cannot read the paper's templates,
  so `--model organism` defaults to it.

A user's own is a JSON file of the same layout as `npti_lens/protocols/*.json`, validated on load.
Artifacts record `protocol` (the name) and `protocol_hash` (a hash of the resolved content, name and
description left out, so two files that say the same thing have the same hash).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npti_lens.core.constants import POLES, TRAITS, reference_key
from npti_lens.core.errors import UserError
from npti_lens.core.files import fingerprint
from npti_lens.inputs import PROTOCOL_DIR  # noqa: E402
from npti_lens.inputs.prompts import Prompt, render_messages, tokenize
from npti_lens.method.induction import CLAMP_LAYERS, CLAMP_ORDERS, KEEP_RULES, InduceConfig
from npti_lens.model.generation import GenerateConfig

DEFAULT = "npti"
ORGANISM = "organism"

# Stage -> the fields its templates must fill, and what uses it.
STAGES: dict[str, tuple[str, ...]] = {
    "search": ("personality", "question"),  # npti search: a persona description of the pole
    "neutral": ("question",),  # npti generate / induce: no persona
    "simple": ("personality", "question"),  # npti baseline --method simple: the pole's adjective phrase
    "p2": ("personality", "question"),  # --method p2: a full description, as the released loop ran it
    "p2-as-written": ("personality", "question"),  # --method p2-as-written: the released TEMPLATE_p2
}
JUDGE_FIELDS = {"trait": ("BFI", "factors", "question", "answer"), "fluency": ("question", "answer")}
GPU_DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    repetition_penalty: float
    temperature: float


@dataclass(frozen=True)
class Stage:
    system: str | None  # None: no system message
    user: str
    sampling: Sampling


@dataclass(frozen=True)
class JudgePrompts:
    system: str | None
    trait: str
    fluency: str
    factors: dict[str, str]  # trait -> the text filling {factors}
    rating_pattern: str  # regex; group 1 is the rating digit; the last match counts

    def rating(self, reply: str | None) -> int | None:
        found = re.findall(self.rating_pattern, reply or "")
        return int(found[-1]) if found else None


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    content: dict[str, Any]  # the file's content: what the hash covers
    source: str  # the file it came from

    # ----- reading the bundle --------------------------------------------------------------

    @functools.cached_property
    def hash(self) -> str:
        return fingerprint({k: v for k, v in self.content.items() if k not in ("name", "description")})

    def record(self) -> dict[str, str]:
        """The fields every artifact carries: which protocol made it."""
        return {"protocol": self.name, "protocol_hash": self.hash}

    @property
    def gpu_dtype(self) -> str:
        return str(self.content["gpu_dtype"])

    def stage(self, name: str) -> Stage:
        raw = self.content["stages"].get(name)
        if raw is None:
            defined = ", ".join(self.content["stages"]) or "none"
            raise UserError(
                f"--protocol: protocol {self.name!r} ({self.source}) defines no {name!r} stage "
                f"(it defines {defined}); add it to the file or choose another protocol"
            )
        return Stage(system=raw["system"], user=raw["user"], sampling=Sampling(**raw["sampling"]))

    @property
    def judge(self) -> JudgePrompts:
        raw = self.content.get("judge")
        if raw is None:
            raise UserError(
                f"--protocol: protocol {self.name!r} ({self.source}) defines no judge prompts; "
                "choose npti or lens, or add a judge section"
            )
        return JudgePrompts(**raw)

    def adjective(self, trait: str, pole: str) -> str:
        """The simple baseline's phrase for a pole ('an introverted')."""
        return str(self.content["adjectives"][reference_key(trait, pole)])

    # ----- applying it ------------------------------------------------------------------------

    def render(self, tokenizer: Any, stage: str, **fields: str) -> str:
        """The exact text the model receives for `stage` (chat template applied where there is one)."""
        st = self.stage(stage)
        system = st.system.format(**fields) if st.system is not None else ""
        plain = self.content["plain"]
        return render_messages(
            tokenizer, st.user.format(**fields), system, plain=(plain["with_system"], plain["without_system"])
        )

    def prompt(self, tokenizer: Any, stage: str, **fields: str) -> Prompt:
        text = self.render(tokenizer, stage, **fields)
        return Prompt(text=text, token_ids=tokenize(tokenizer, text))

    def generate_config(self, stage: str, **overrides: Any) -> GenerateConfig:
        """The stage's sampling settings; `overrides` (not None) win."""
        s = self.stage(stage).sampling
        base = dataclasses.asdict(s)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return GenerateConfig(**base)

    def induce_config(self, **overrides: Any) -> InduceConfig:
        """The protocol's keep rule and clamp; `overrides` (not None) win."""
        base = dict(self.content["induction"])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return InduceConfig(**base)


# ----- loading and validation -----------------------------------------------------------------


def shipped() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json"))


def protocol_for(model: Any, spec: str | Path | Protocol | None = None) -> Protocol:
    """`spec` loaded; None: the organism's protocol for the organism, else `npti`."""
    if spec is None:
        from npti_lens.model.load import facts

        return load_protocol(facts(model).protocol)
    return load_protocol(spec)


def load_protocol(spec: str | Path | Protocol | None = None, *, model: str | None = None) -> Protocol:
    """A protocol by shipped name or JSON file; None: `organism` for the organism, else `npti`."""
    if isinstance(spec, Protocol):
        return spec
    if spec is None:
        spec = ORGANISM if model == ORGANISM else DEFAULT
    spec = str(spec)
    if spec.endswith(".json") or "/" in spec or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise UserError(
                f"--protocol: {path} is not a file (a protocol JSON file, or one of {', '.join(shipped())})"
            )
    else:
        path = PROTOCOL_DIR / f"{spec}.json"
        if not path.is_file():
            raise UserError(
                f"--protocol: unknown protocol {spec!r}; choose one of {', '.join(shipped())} or pass a JSON file"
            )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--protocol: {path}: not valid JSON ({e})".splitlines()[0]) from None
    validate(content, str(path))
    return Protocol(
        name=content["name"], description=content.get("description", ""), content=content, source=str(path)
    )


def _fields(template: Any, where: str) -> set[str]:
    if not isinstance(template, str):
        raise UserError(f"{where}: expected a template string, got {type(template).__name__}")
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UserError(f"{where}: {e} (write a literal brace as {{{{ or }}}})") from None


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{where}: missing field {key!r}; see npti_lens/protocols/npti.json for the layout")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError(
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


def validate(content: Any, source: str) -> None:
    """Every field a protocol needs, of the right kind; every template fills exactly its fields."""
    where = f"--protocol: {source}"
    _need(content, "name", str, where)
    dtype = _need(content, "gpu_dtype", str, where)
    if dtype not in GPU_DTYPES:
        raise UserError(f"{where}.gpu_dtype: {dtype!r} is not one of {', '.join(GPU_DTYPES)}")
    plain = _need(content, "plain", dict, where)
    for k in ("with_system", "without_system"):
        got = _fields(_need(plain, k, str, f"{where}.plain"), f"{where}.plain.{k}")
        want = {"system", "user"} if k == "with_system" else {"user"}
        if got != want:
            raise UserError(f"{where}.plain.{k}: fills {sorted(got)}, needs exactly {sorted(want)}")
    stages = _need(content, "stages", dict, where)
    for name, st in stages.items():
        w = f"{where}.stages.{name}"
        if name not in STAGES:
            raise UserError(f"{w}: unknown stage; stages are {', '.join(STAGES)}")
        system = _need(st, "system", (str, type(None)), w)
        got = _fields(_need(st, "user", str, w), f"{w}.user") | (
            _fields(system, f"{w}.system") if system else set()
        )
        want = set(STAGES[name])
        if "question" not in got:
            raise UserError(f"{w}: no template holds {{question}}; the user template needs it")
        if got != want:
            raise UserError(
                f"{w}: templates fill {sorted(got)}; the {name} stage fills exactly {sorted(want)}"
            )
        sampling = _need(st, "sampling", dict, w)
        n = _need(sampling, "max_new_tokens", int, f"{w}.sampling")
        rp = _need(sampling, "repetition_penalty", (int, float), f"{w}.sampling")
        temp = _need(sampling, "temperature", (int, float), f"{w}.sampling")
        if n < 1 or rp <= 0 or temp < 0:
            raise UserError(
                f"{w}.sampling: needs max_new_tokens >= 1, repetition_penalty > 0, temperature >= 0"
            )
        if set(sampling) != {"max_new_tokens", "repetition_penalty", "temperature"}:
            raise UserError(f"{w}.sampling: fields are max_new_tokens, repetition_penalty, temperature")
    if "simple" in stages:
        adjectives = _need(content, "adjectives", dict, where)
        for key in (reference_key(t, p) for t in TRAITS for p in POLES):
            _need(adjectives, key, str, f"{where}.adjectives")
    induction = _need(content, "induction", dict, where)
    for key, allowed in (("keep", KEEP_RULES), ("clamp_order", CLAMP_ORDERS), ("clamp_layers", CLAMP_LAYERS)):
        value = _need(induction, key, str, f"{where}.induction")
        if value not in allowed:
            raise UserError(f"{where}.induction.{key}: {value!r} is not one of {', '.join(allowed)}")
    judge = content.get("judge")
    if judge is not None:
        w = f"{where}.judge"
        _need(judge, "system", (str, type(None)), w)
        for k, allowed in JUDGE_FIELDS.items():
            got = _fields(_need(judge, k, str, w), f"{w}.{k}")
            if "answer" not in got or not got <= set(allowed):
                raise UserError(
                    f"{w}.{k}: fills {sorted(got)}; needs {{answer}} and may use {sorted(allowed)}"
                )
        factors = _need(judge, "factors", dict, w)
        for t in TRAITS:
            _need(factors, t, str, f"{w}.factors")
        pattern = _need(judge, "rating_pattern", str, w)
        try:
            if re.compile(pattern).groups < 1:
                raise UserError(f"{w}.rating_pattern: needs a group around the rating digit")
        except re.error as e:
            raise UserError(f"{w}.rating_pattern: not a regular expression ({e})") from None
        extra = set(judge) - {"system", "trait", "fluency", "factors", "rating_pattern"}
        if extra:
            raise UserError(f"{w}: unknown fields {sorted(extra)}")
