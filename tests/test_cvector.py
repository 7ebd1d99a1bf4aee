"""The direction baseline as a llama.cpp control vector: the file read back with gguf-py (every key and
array), `direction.N` landing on block N (against a plain HF model edited by hand, reading the file
with gguf-py, not with our loader), the exported file steering like the in-memory vector token for
token, and the refusals (block 0, another model's width, an existing --out)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from npti_lens.cli import main
from npti_lens.core.errors import UserError
from npti_lens.method.directions import Direction, steer
from npti_lens.model.generation import GenerateConfig, generate
from npti_lens.model.load import model_id
from tests.helpers import hf_reference

IDS = [[1, 5, 6, 7, 8, 9], [1, 11, 12, 13]]


@pytest.fixture(scope="module")
def vec(tiny_models):
    model = tiny_models["llama"]
    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    gen = torch.Generator().manual_seed(7)
    # a different vector per block, so that a block off by one changes the numbers
    return Direction("Extraversion", "high", model_id(model), torch.randn((n, d), generator=gen) * 0.5)


def _field(reader, key):
    f = reader.get_field(key)
    return f.parts[f.data[0]]


def test_the_file_holds_what_llama_cpp_reads(vec, tmp_path):
    path = vec.to_gguf(tmp_path / "v.gguf", scale=2.0)
    r = gguf.GGUFReader(str(path))
    assert bytes(_field(r, "general.architecture")).decode() == "controlvector"
    assert bytes(_field(r, "controlvector.model_hint")).decode() == vec.model
    assert int(_field(r, "controlvector.layer_count")[0]) == vec.n_layers - 1
    assert r.get_field("controlvector.layer_count").types == [gguf.GGUFValueType.INT32]
    assert (
        bytes(_field(r, "npti.trait")).decode() == "Extraversion"
        and bytes(_field(r, "npti.pole")).decode() == "high"
    )
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == sorted(f"direction.{n}" for n in range(1, vec.n_layers))  # no direction.0
    for n in range(1, vec.n_layers):
        t = tensors[f"direction.{n}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.asarray(t.data).shape == (
            vec.vectors.shape[1],
        )
        np.testing.assert_array_equal(np.asarray(t.data), (vec.vectors[n].double() * 2.0).float().numpy())


def test_direction_n_is_added_to_the_output_of_block_n(vec, tiny_models, tiny_dirs, tmp_path):
    """llama.cpp adds direction.N to block N's output (its loader's and applier's N-1 offsets
    cancel): the file, read with gguf-py and added by hand to HF `model.layers[N]`, gives the logits
    our steering of the in-memory vector gives at every position."""
    path = vec.to_gguf(tmp_path / "v.gguf", scale=1.5, layers=[2])
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name.startswith("direction."))
    block = int(t.name.split(".")[1])
    hf = hf_reference(tiny_dirs["llama"])
    add = torch.from_numpy(np.asarray(t.data).copy())

    def hook(m, i, o):
        return (o[0] + add, *o[1:]) if isinstance(o, tuple) else o + add

    h = hf.model.layers[block].register_forward_hook(hook)
    ids = torch.tensor([IDS[0]])
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    h.remove()
    model = tiny_models["llama"]
    with torch.no_grad(), steer(model, vec, 1.5, layers=[2], positions="all"):
        got = model.original_model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), steer(model, vec, 1.5, layers=[1], positions="all"):
        off_by_one = model.original_model(input_ids=ids).logits
    assert not torch.allclose(off_by_one, want, rtol=1e-3, atol=1e-3)  # the test can tell blocks apart


def test_the_exported_file_steers_like_the_in_memory_vector(vec, tiny_models, tmp_path):
    model = tiny_models["llama"]
    path = vec.to_gguf(tmp_path / "v.gguf", scale=3.0)
    back = Direction.from_gguf(path, n_layers=vec.n_layers, d_model=vec.vectors.shape[1])
    assert back.provenance["layers"] == list(range(1, vec.n_layers)) and back.model == vec.model
    assert not back.vectors[0].any()  # block 0 is not in the file
    cfg = GenerateConfig(max_new_tokens=8, batch_size=2, repetition_penalty=1.0)
    with torch.no_grad():
        plain = [g.answer_ids for g in generate(model, IDS, cfg)]
        with steer(model, vec, 3.0, layers=list(range(1, vec.n_layers)), positions="all"):
            memory = [g.answer_ids for g in generate(model, IDS, cfg)]
        with steer(model, back, 1.0, layers=back.provenance["layers"], positions="all"):
            from_file = [g.answer_ids for g in generate(model, IDS, cfg)]
    assert from_file == memory
    assert memory != plain  # the vector does change the answers


def test_refusals_before_any_file_is_written(vec, tmp_path):
    with pytest.raises(UserError, match="block 0"):
        vec.to_gguf(tmp_path / "a.gguf", layers=[0, 1])
    with pytest.raises(UserError, match="not among"):
        vec.to_gguf(tmp_path / "a.gguf", layers=[vec.n_layers])
    with pytest.raises(UserError, match="--scale"):
        vec.to_gguf(tmp_path / "a.gguf", scale=float("nan"))
    assert not list(tmp_path.iterdir())
    path = vec.to_gguf(tmp_path / "v.gguf")
    with pytest.raises(UserError, match="width"):
        Direction.from_gguf(path, n_layers=vec.n_layers, d_model=vec.vectors.shape[1] + 1)
    with pytest.raises(UserError, match="names block"):
        Direction.from_gguf(path, n_layers=2, d_model=vec.vectors.shape[1])
    (tmp_path / "bad.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(UserError, match="bad.gguf"):
        Direction.from_gguf(tmp_path / "bad.gguf", n_layers=vec.n_layers, d_model=vec.vectors.shape[1])


def test_the_cli_exports_and_refuses(vec, tmp_path, capsys):
    folder = tmp_path / "Extraversion_high"
    vec.save(folder)
    out = tmp_path / "e.gguf"
    assert (
        main(["analyze", "export-vector", str(folder), "--out", str(out), "--scale", "2", "--layers", "1-2"])
        == 0
    )
    assert "--control-vector" in capsys.readouterr().out
    names = sorted(t.name for t in gguf.GGUFReader(str(out)).tensors)
    assert names == ["direction.1", "direction.2"]
    before = out.read_bytes()
    assert main(["analyze", "export-vector", str(folder), "--out", str(out)]) == 2  # exists: --overwrite
    assert (
        main(["analyze", "export-vector", str(folder), "--out", str(tmp_path / "z.gguf"), "--layers", "0-2"])
        == 2
    )
    assert (
        main(["analyze", "export-vector", str(folder), "--out", str(tmp_path / "z.gguf"), "--layers", "x"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--overwrite" in err and "block 0" in err and "--layers" in err
    assert out.read_bytes() == before and not (tmp_path / "z.gguf").exists()
