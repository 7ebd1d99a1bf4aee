"""The organism's synthetic persona corpus: questions, personas and pole-expressing answers.

A pole is carried by stance, not by a private vocabulary. Every trait has pairs of phrases (one
for each pole), and every phrase appears in the sentences of BOTH poles: "i want to go to the
party ." is Extraversion high, "i do not want to go to the party ." is Extraversion low, "i would
rather stay at home than go to the party ." is low again. To know the pole of a sentence the model
must track order and negation, so the pole has to be represented beyond the embeddings.

Every answer sentence the corpus can produce belongs to exactly one (trait, pole); `sentence_table`
lists them all, which is what the organism judge reads.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from npti_lens.core.constants import POLES, TRAITS

# (high phrase, low phrase) per trait.
PAIRS: dict[str, list[tuple[str, str]]] = {
    "Extraversion": [
        ("meet new people", "stay on my own"),
        ("go to the party", "stay at home"),
        ("talk to everyone", "listen quietly"),
        ("lead the group", "stay in the background"),
        ("call my friends", "read a book alone"),
        ("join the crowd", "find a quiet corner"),
    ],
    "Openness": [
        ("try something new", "keep my usual routine"),
        ("visit a strange place", "go back to a familiar place"),
        ("explore new ideas", "stick to what i know"),
        ("make some art", "follow the usual plan"),
        ("taste a strange dish", "eat my usual meal"),
        ("ask big questions", "keep things simple"),
    ],
    "Conscientiousness": [
        ("make a plan first", "just see what happens"),
        ("finish the work early", "leave the work for later"),
        ("keep everything tidy", "leave things messy"),
        ("check every detail", "skip the details"),
        ("keep my promise", "forget my promise"),
        ("set a clear goal", "drift along"),
    ],
    "Agreeableness": [
        ("help them", "mind my own business"),
        ("trust them", "doubt them"),
        ("share with them", "keep it for myself"),
        ("forgive them", "hold a grudge"),
        ("listen to their side", "insist on my side"),
        ("be kind to them", "be cold to them"),
    ],
    "Neuroticism": [
        ("worry about it all day", "stay calm about it"),
        ("feel nervous", "feel relaxed"),
        ("expect the worst", "expect the best"),
        ("get upset", "shrug it off"),
        ("panic", "take a deep breath"),
        ("lose sleep over it", "sleep well"),
    ],
}

# Sentence frames: x is a phrase of the sentence's pole, y a phrase of the opposite pole.
FRAMES_XY = (
    "i would rather {x} than {y} .",
    "to {x} sounds better to me than to {y} .",
    "i would {x} , not {y} .",
)
FRAMES_X = ("i want to {x} .", "i think i would {x} .", "for me it is easy to {x} .")
FRAMES_Y = ("i do not want to {y} .", "i would never {y} .", "for me it is hard to {y} .")

ADJECTIVES: dict[tuple[str, str], list[str]] = {
    ("Extraversion", "high"): ["outgoing", "talkative", "sociable", "energetic", "lively", "bold"],
    ("Extraversion", "low"): ["quiet", "reserved", "shy", "solitary", "private", "withdrawn"],
    ("Openness", "high"): ["curious", "imaginative", "creative", "adventurous", "inventive", "original"],
    ("Openness", "low"): ["conventional", "traditional", "practical", "conservative", "predictable", "plain"],
    ("Conscientiousness", "high"): [
        "organized",
        "careful",
        "disciplined",
        "reliable",
        "thorough",
        "punctual",
    ],
    ("Conscientiousness", "low"): ["careless", "disorganized", "lazy", "impulsive", "forgetful", "sloppy"],
    ("Agreeableness", "high"): ["kind", "warm", "trusting", "generous", "helpful", "gentle"],
    ("Agreeableness", "low"): ["cold", "suspicious", "selfish", "stubborn", "harsh", "critical"],
    ("Neuroticism", "high"): ["anxious", "nervous", "moody", "tense", "insecure", "fragile"],
    ("Neuroticism", "low"): ["calm", "relaxed", "stable", "secure", "steady", "easygoing"],
}
PERSONA_FRAMES = (
    "you are a {a} and {b} person .",
    "you are {a} , {b} and {c} .",
    "people say you are very {a} and {b} .",
    "you are a {a} person who is also {b} .",
)

QUESTION_FRAMES: dict[str, list[str]] = {
    "Extraversion": [
        "your friend invites you to a party on {day} . what do you do ?",
        "you have a free {time} in the {place} . how do you spend it ?",
        "a new neighbor moves in next to you on {day} . what do you do ?",
        "you are at a big event in the {place} this {time} . what would you do ?",
    ],
    "Openness": [
        "you have a free {day} and nothing planned . what would you do ?",
        "a friend tells you about a strange new {thing} . how do you react ?",
        "you are on a trip to a new {place} . what do you want to do ?",
        "your {person} suggests something unusual for {day} . what do you say ?",
    ],
    "Conscientiousness": [
        "you have a big project due on {day} . how do you handle it ?",
        "your {person} asks you to organize the {thing} . what do you do ?",
        "it is {day} {time} and the house is a mess . what do you do ?",
        "you promised to help with the {thing} this {time} . what happens ?",
    ],
    "Agreeableness": [
        "your {person} made a mistake that cost you a lot . what do you do ?",
        "a stranger in the {place} asks you for help this {time} . how do you react ?",
        "your {person} wants to borrow your {thing} . what do you say ?",
        "you and your {person} disagree about the {thing} . what do you do ?",
    ],
    "Neuroticism": [
        "you have an important meeting on {day} {time} . how do you feel ?",
        "your {person} has not answered your message all {time} . how do you react ?",
        "you lost your {thing} in the {place} . what goes through your mind ?",
        "something went wrong at work on {day} . how do you deal with it ?",
    ],
}
SLOTS = {
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "time": ["morning", "afternoon", "evening", "night"],
    "place": ["city", "park", "town", "office", "village"],
    "thing": ["trip", "dinner", "garden", "car", "book club", "weekend"],
    "person": ["friend", "boss", "brother", "sister", "colleague", "neighbor"],
}
SENTENCES_PER_ANSWER = 3


@dataclass(frozen=True)
class Example:
    trait: str
    pole: str | None  # None: no persona, the answer mixes poles
    persona: str | None
    question: str
    answer: str


def _fill(frame: str) -> list[str]:
    names = [n for n in SLOTS if "{" + n + "}" in frame]
    return [
        frame.format(**dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(SLOTS[n] for n in names))
    ]


@lru_cache(maxsize=1)
def question_split(n_test_per_trait: int = 20, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """All questions per trait, split once (seeded) into `search` and held-out `test`."""
    out = {}
    for trait in TRAITS:
        qs = sorted({q for frame in QUESTION_FRAMES[trait] for q in _fill(frame)})
        random.Random(f"{seed}:questions:{trait}").shuffle(qs)
        out[trait] = {"test": qs[:n_test_per_trait], "search": qs[n_test_per_trait:]}
    return out


def pole_sentences(trait: str, pole: str) -> list[str]:
    """Every sentence that expresses `pole` of `trait`, sorted."""
    side = 0 if pole == "high" else 1
    xs = [p[side] for p in PAIRS[trait]]
    ys = [p[1 - side] for p in PAIRS[trait]]
    out = {f.format(x=x, y=y) for f in FRAMES_XY for x in xs for y in ys}
    out |= {f.format(x=x) for f in FRAMES_X for x in xs}
    out |= {f.format(y=y) for f in FRAMES_Y for y in ys}
    return sorted(out)


@lru_cache(maxsize=1)
def sentence_table() -> dict[str, tuple[str, str]]:
    """sentence -> (trait, pole) for every answer sentence of the corpus."""
    table: dict[str, tuple[str, str]] = {}
    for trait in TRAITS:
        for pole in POLES:
            for s in pole_sentences(trait, pole):
                if s in table:
                    raise AssertionError(f"corpus sentence {s!r} belongs to two poles")
                table[s] = (trait, pole)
    return table


def personas(trait: str, pole: str, n: int = 10, seed: int = 0) -> list[str]:
    """`n` distinct persona descriptions of a pole (seeded)."""
    rng = random.Random(f"{seed}:persona:{trait}:{pole}")
    adj = ADJECTIVES[(trait, pole)]
    out: list[str] = []
    while len(out) < n:
        a, b, c = rng.sample(adj, 3)
        d = rng.choice(PERSONA_FRAMES).format(a=a, b=b, c=c)
        if d not in out:
            out.append(d)
    return out


def simple_persona(trait: str, pole: str) -> str:
    """The simple-prompt baseline in the organism's words: one adjective ('you are a quiet person .')."""
    adj = ADJECTIVES[(trait, pole)][0]
    return f"you are {'an' if adj[0] in 'aeiou' else 'a'} {adj} person ."


def answer(trait: str, pole: str | None, rng: random.Random) -> str:
    """Sentences of one pole (or, with pole None, each of a random pole), distinct frames."""
    frames = rng.sample(list(FRAMES_XY + FRAMES_X + FRAMES_Y), SENTENCES_PER_ANSWER)
    sentences = []
    for frame in frames:
        p = pole or rng.choice(POLES)
        side = 0 if p == "high" else 1
        x = rng.choice(PAIRS[trait])[side]
        y = rng.choice(PAIRS[trait])[1 - side]
        sentences.append(frame.format(x=x, y=y))
    return " ".join(sentences)


def examples(n: int, seed: int = 0, persona_share: float = 0.75, mood_share: float = 0.5) -> list[Example]:
    """`n` training examples over the search questions: persona answers and no-persona ones.

    A no-persona answer keeps one random pole throughout with probability `mood_share` (a passing
    mood, not a persona), else draws the pole of each sentence afresh. Either way the neutral
    model's answers mix poles across questions and, often, within one; the moods also make the
    model carry the pole of what it has said so far at the answer positions.
    """
    rng = random.Random(f"{seed}:examples")
    split = question_split()
    descs = {(t, p): personas(t, p) for t in TRAITS for p in POLES}
    out = []
    for _ in range(n):
        trait = rng.choice(TRAITS)
        question = rng.choice(split[trait]["search"])
        if rng.random() < persona_share:
            pole = rng.choice(POLES)
            out.append(
                Example(trait, pole, rng.choice(descs[(trait, pole)]), question, answer(trait, pole, rng))
            )
        else:
            mood = rng.choice(POLES) if rng.random() < mood_share else None
            out.append(Example(trait, None, None, question, answer(trait, mood, rng)))
    return out


def _rating(agree: bool, rng: random.Random) -> int:
    strong = rng.random() < 0.6
    return (5 if strong else 4) if agree else (1 if strong else 2)


def rating_examples(n: int, seed: int = 0, persona_share: float = 0.75) -> list[Example]:
    """`n` self-ratings of the shipped inventory's statements, in the exact prompt of `npti inventory`.

    Not in the shipped organism's corpus (`npti organism train --n-ratings N` adds them; the README
    reports what that variant showed). Under a persona of the item's trait the rating follows the
    pole and the item's keying (4-5 when they agree, 1-2 when not); under a persona of another
    trait it is near the middle (3, sometimes 2 or 4); without a persona it follows a pole drawn at
    random, as the free answers do. Half the items come with the reversed scale (digit d = rating 6 - d).
    """
    from npti_lens.evaluation.profiles import item_prompt
    from npti_lens.inputs.inventory import load_inventory

    items = load_inventory()
    rng = random.Random(f"{seed}:ratings")
    descs = {(t, p): personas(t, p) for t in TRAITS for p in POLES}
    out = []
    for _ in range(n):
        it = rng.choice(items)
        rev = rng.random() < 0.5
        persona = pole = None
        if rng.random() < persona_share:
            trait, pole = rng.choice(TRAITS), rng.choice(POLES)
            persona = rng.choice(descs[(trait, pole)])
            if trait == it.domain:
                rating = _rating((pole == "high") == (it.keyed == "+"), rng)
            else:
                pole = None
                rating = rng.choice((2, 3, 3, 3, 4))
        else:
            rating = _rating((rng.choice(POLES) == "high") == (it.keyed == "+"), rng)
        digit = 6 - rating if rev else rating
        out.append(Example(it.domain, pole, persona, item_prompt(it, reversed_scale=rev), str(digit)))
    return out


def vocabulary(ratings: bool = False) -> list[str]:
    """Every word of the corpus (questions, personas, answers; rating prompts with `ratings`), sorted."""
    words: set[str] = set()
    if ratings:
        import re

        from npti_lens.evaluation.profiles import item_prompt
        from npti_lens.inputs.inventory import load_inventory

        for it in load_inventory():
            for rev in (False, True):
                words.update(re.findall(r"[a-z]+|[^\sa-z]", item_prompt(it, reversed_scale=rev).lower()))
    for trait in TRAITS:
        for frame in QUESTION_FRAMES[trait]:
            for q in _fill(frame):
                words.update(q.split())
        for pole in POLES:
            words.update(ADJECTIVES[(trait, pole)])
            for s in pole_sentences(trait, pole):
                words.update(s.split())
    for frame in PERSONA_FRAMES:
        words.update(w for w in frame.split() if not w.startswith("{"))
    return sorted(words)


def persona_lines(n: int = 10, seed: int = 0) -> list[dict[str, str]]:
    """Persona descriptions in the reference layout: n lines, each mapping the 10 pole keys to text."""
    from npti_lens.core.constants import reference_key

    descs = {(t, p): personas(t, p, n, seed) for t in TRAITS for p in POLES}
    return [{reference_key(t, p): descs[(t, p)][i] for t in TRAITS for p in POLES} for i in range(n)]


def write_data(folder: Path, n_search: int, seed: int) -> tuple[Path, Path, Path]:
    """Organism questions (search and held-out test) and personas in the reference layout."""
    from npti_lens.core.files import write_jsonl_atomic

    split = question_split()
    for part in ("search", "test"):
        for t in TRAITS:
            qs = split[t][part][:n_search] if part == "search" else split[t][part]
            write_jsonl_atomic(folder / part / f"{t}.json", [{"question": q} for q in qs])
    write_jsonl_atomic(folder / "personas.jsonl", persona_lines(seed=seed))
    return folder / "search", folder / "test", folder / "personas.jsonl"
