"""Atomic writes, JSON lines with line-numbered errors, and small validation helpers."""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npti_lens.core.constants import POLES, TRAITS
from npti_lens.core.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file gets the mode open() would give
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, flag: str = "--out", *, folder: bool) -> Path:
    """Refuse, before any work, an output that cannot be written: a file where a folder is wanted
    (or the reverse), a path under a file, a read-only place. Creates nothing."""
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        other = "file" if folder else "folder"
        raise UserError(f"{flag}: {path} is a {other}, not a {kind}; choose another path")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag}: {path} lies under {parent}, which is a file; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".npti-write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag}: cannot write in {parent} ({e.strerror}); choose another path") from None
    return path


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
    """The file's text; bytes that are not UTF-8 (or a broken .gz) are a one-line error with the line."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} is not UTF-8 text; save the file as UTF-8"
        ) from None


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


def parse_poles(traits: str, poles: str) -> list[tuple[str, str]]:
    """'Extraversion,Agreeableness' with 'high' (one pole for all) or 'high,low' (one per trait)."""
    ts = [check_trait(t.strip()) for t in traits.split(",") if t.strip()]
    ps = [check_pole(p.strip()) for p in poles.split(",") if p.strip()]
    ps = ps * len(ts) if len(ps) == 1 else ps
    if not ts or len(ps) != len(ts):
        raise UserError(f"--pole: give one pole, or one per trait of --trait ({len(ts)})")
    return list(zip(ts, ps, strict=True))


def parse_numbers(spec: str, flag: str, kind: type = float) -> list:
    """'0.6,1,1.5' -> [0.6, 1.0, 1.5]; anything else is a one-line error naming the flag."""
    try:
        values = [kind(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: {spec!r} is not a comma-separated list of {kind.__name__}s") from None
    if not values:
        raise UserError(f"{flag}: no value given")
    return values


def parse_layer_spec(spec: str, flag: str) -> list[int]:
    """'10,12' or '8-20' or both ('1,4-6') -> sorted block indices; anything else is one line naming the flag."""
    out: set[int] = set()
    for part in (x.strip() for x in spec.split(",")):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise UserError(f"{flag}: {spec!r} is not a list of blocks such as 10,12 or 8-20")
        out.update(range(int(lo), int(hi if dash else lo) + 1))
    return sorted(out)


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    fields = list(rows[0])
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_summary(path: str | Path, flag: str = "--scores") -> list[dict[str, Any]]:
    """The rows of a `npti score` summary.csv (gamma as a float or None)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}: {path} not found; pass folders written by npti score")
    rows = list(csv.DictReader(_read_text(path).splitlines()))
    for i, r in enumerate(rows, start=2):
        if not r.get("trait") or not r.get("condition") or not r.get("trait_score_mean"):
            raise UserError(
                f"{path}:{i}: needs trait, pole, condition and trait_score_mean (a npti score summary)"
            )
        r["gamma"] = float(r["gamma"]) if r.get("gamma") else None
    return rows
