"""Atomic writes, JSON lines with line-numbered errors, and small validation helpers."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npti_lens.constants import POLES, TRAITS
from npti_lens.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def read_jsonl(path: str | Path, *, what: str = "JSON lines", allow_empty: bool = False) -> list[dict]:
    """Read a JSON-lines file of objects; a bad line is a one-line error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected {what})")
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        obj["_line"] = lineno
        rows.append(obj)
    if not rows and not allow_empty:
        raise UserError(f"{path}: file is empty (expected {what})")
    return rows


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (for data and config fingerprints)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def check_trait(trait: str, flag: str = "--trait") -> str:
    for t in TRAITS:
        if trait.lower() == t.lower():
            return t
    raise UserError(f"{flag}: unknown trait {trait!r}; choose one of {', '.join(TRAITS)}")


def check_pole(pole: str, flag: str = "--pole") -> str:
    if pole not in POLES:
        raise UserError(f"{flag}: unknown pole {pole!r}; choose high or low")
    return pole


def parse_traits(spec: str, flag: str = "--traits") -> list[str]:
    if spec.strip().lower() == "all":
        return list(TRAITS)
    traits = [check_trait(t.strip(), flag) for t in spec.split(",") if t.strip()]
    if not traits:
        raise UserError(f"{flag}: no trait given; pass 'all' or a comma-separated list")
    return traits


def parse_numbers(spec: str, flag: str, kind: type = float) -> list:
    """'0.6,1,1.5' -> [0.6, 1.0, 1.5]; anything else is a one-line error naming the flag."""
    try:
        values = [kind(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: {spec!r} is not a comma-separated list of {kind.__name__}s") from None
    if not values:
        raise UserError(f"{flag}: no value given")
    return values
