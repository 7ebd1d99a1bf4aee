"""Stage 4: streaming activation statistics at answer positions (what `recording.py` adds up).

Per neuron: tokens with a > 0, a 301-bin histogram of a (edges -inf, 0.00, 0.01, ..., 2.99, +inf,
each bin holding lower < a <= upper), and the sum and sum of squares of a. Nothing is cached per
token: each forward adds its counts to fixed-size tensors, so memory does not grow with the number
of tokens, and statistics of batches, runs and shards add up exactly (integer counts; float64 sums).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int64
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from npti_lens.core.constants import EDGES_PER_UNIT, N_BINS, N_INNER_EDGES, STATS_DIR, pole_name
from npti_lens.core.errors import UserError
from npti_lens.core.files import atomic_path, read_json, write_json_atomic

# Tokens x neurons handled at once when binning, to bound the temporary index tensor.
CHUNK_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=8)
def _padded_edges(device: str) -> Tensor:
    """-inf, the 300 float32 edges, +inf: bin k holds padded[k] < a <= padded[k + 1]."""
    inf = torch.tensor([torch.inf])
    return torch.cat([-inf, bin_edges(torch.float32), inf]).to(device)


def bin_index(a: Float[Tensor, "*shape"]) -> Int64[Tensor, "*shape"]:
    """The bin (0..300) of every float32 activation, exactly as the edge definition says.

    ceil(100 a) is the bin up to float rounding, which can put a value next to an edge one bin
    off; one comparison with each neighbouring edge corrects it. (torch.bucketize gives the same
    bins but is several times slower on the CPU.)
    """
    edges = _padded_edges(str(a.device))
    k = torch.ceil(a * EDGES_PER_UNIT).clamp_(0, N_BINS - 1).long()
    k += torch.take(edges, k + 1) < a
    k.sub_((torch.take(edges, k) >= a).long())
    return k


def bin_edges(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The 300 inner edges k/100 (k = 0..299), each rounded DOWN to `dtype`.

    For a value a of that dtype, `a <= edge_rounded_down` holds exactly when `a <= k/100` holds for
    the decimal k/100, so binning in float32 gives the bins of exact decimal edges.
    """
    exact = torch.arange(N_INNER_EDGES, dtype=torch.float64) / EDGES_PER_UNIT
    edges = exact.to(dtype)
    too_big = edges.double() > exact
    edges[too_big] = torch.nextafter(edges[too_big], torch.tensor(-torch.inf, dtype=dtype))
    return edges.to(device)


def bin_lower_edges() -> Tensor:
    """Lower edge of each of the 301 bins as float64: -inf, 0.00, 0.01, ..., 2.99."""
    lows = torch.arange(N_INNER_EDGES, dtype=torch.float64) / EDGES_PER_UNIT
    return torch.cat([torch.tensor([-torch.inf], dtype=torch.float64), lows])


@dataclass
class Stats:
    """Statistics of one trait pole; `+` merges two (of the same model) exactly."""

    n_tokens: int
    n_active: Int64[Tensor, "n_layers d_mlp"]
    hist: Int64[Tensor, "n_layers d_mlp n_bins"]
    sum: Float[Tensor, "n_layers d_mlp"]
    sum_sq: Float[Tensor, "n_layers d_mlp"]
    meta: dict[str, Any] = field(default_factory=dict)
    # sum of each block's output (the residual stream after block l) at the same answer tokens:
    # the pole's mean residual, for the mean-difference direction (npti_lens.method.directions)
    resid_sum: Float[Tensor, "n_layers d_model"] | None = None
    # gated MLPs: the sum of up(x) per neuron at the same tokens (its mean turns an NPTI shift into
    # an approximate residual vector, npti_lens.method.directions.npti_as_vector)
    up_sum: Float[Tensor, "n_layers d_mlp"] | None = None

    @classmethod
    def zeros(
        cls,
        n_layers: int,
        d_mlp: int,
        device: torch.device | str = "cpu",
        meta: dict[str, Any] | None = None,
        d_model: int | None = None,
    ) -> Stats:
        """Empty statistics; with `d_model`, the residual stream is summed too."""
        resid = (
            None if d_model is None else torch.zeros((n_layers, d_model), dtype=torch.float64, device=device)
        )
        up = None if d_model is None else torch.zeros((n_layers, d_mlp), dtype=torch.float64, device=device)
        return cls(
            n_tokens=0,
            n_active=torch.zeros((n_layers, d_mlp), dtype=torch.int64, device=device),
            hist=torch.zeros((n_layers, d_mlp, N_BINS), dtype=torch.int64, device=device),
            sum=torch.zeros((n_layers, d_mlp), dtype=torch.float64, device=device),
            sum_sq=torch.zeros((n_layers, d_mlp), dtype=torch.float64, device=device),
            meta=dict(meta or {}),
            resid_sum=resid,
            up_sum=up,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.n_active.shape[0]), int(self.n_active.shape[1]))

    def p_active(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self.n_active.double() / max(self.n_tokens, 1)

    def mean(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self.sum / max(self.n_tokens, 1)

    def std(self) -> Float[Tensor, "n_layers d_mlp"]:
        n = max(self.n_tokens, 1)
        return (self.sum_sq / n - self.mean() ** 2).clamp(min=0).sqrt()

    def __add__(self, other: Stats) -> Stats:
        if self.shape != other.shape:
            raise UserError(f"cannot merge statistics of shapes {self.shape} and {other.shape}")
        return Stats(
            n_tokens=self.n_tokens + other.n_tokens,
            n_active=self.n_active + other.n_active.to(self.n_active.device),
            hist=self.hist + other.hist.to(self.hist.device),
            sum=self.sum + other.sum.to(self.sum.device),
            sum_sq=self.sum_sq + other.sum_sq.to(self.sum_sq.device),
            meta=dict(self.meta),
            resid_sum=None
            if self.resid_sum is None or other.resid_sum is None
            else self.resid_sum + other.resid_sum.to(self.resid_sum.device),
            up_sum=None
            if self.up_sum is None or other.up_sum is None
            else self.up_sum + other.up_sum.to(self.up_sum.device),
        )

    def to(self, device: torch.device | str) -> Stats:
        return Stats(
            self.n_tokens,
            self.n_active.to(device),
            self.hist.to(device),
            self.sum.to(device),
            self.sum_sq.to(device),
            dict(self.meta),
            None if self.resid_sum is None else self.resid_sum.to(device),
            None if self.up_sum is None else self.up_sum.to(device),
        )

    def save(self, path: str | Path) -> None:
        """Write `path` (.safetensors) and the JSON metadata beside it (`path` with .json), atomically.

        The safetensors header holds the metadata too and a SHA-256 of the tensors, so the file
        alone is complete and a damaged one is detected on load (the .json is for reading).
        """
        path = Path(path)
        tensors = {k: v.contiguous().cpu() for k, v in self._tensors().items()}
        header = {
            "npti_meta": json.dumps({**self.meta, "n_tokens": self.n_tokens}),
            "sha256": _digest(tensors),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
        write_json_atomic(path.with_suffix(".json"), {**self.meta, "n_tokens": self.n_tokens})

    def _tensors(self) -> dict[str, Tensor]:
        return {
            "n_active": self.n_active,
            "hist": self.hist,
            "sum": self.sum,
            "sum_sq": self.sum_sq,
            "n_tokens": torch.tensor([self.n_tokens]),
            **({} if self.resid_sum is None else {"resid_sum": self.resid_sum}),
            **({} if self.up_sum is None else {"up_sum": self.up_sum}),
        }

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        """Read statistics written by `save`; a damaged, truncated or inconsistent file is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: statistics file not found")
        damaged = f"{path}: damaged statistics file"
        fix = "rerun npti search for this pole into a new --out folder"
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise UserError(f"{damaged} ({str(e).splitlines()[0][:80]}); {fix}") from None
        missing = {"n_active", "hist", "sum", "sum_sq", "n_tokens"} - set(t)
        if missing:
            raise UserError(f"{damaged} (no {', '.join(sorted(missing))}); {fix}")
        if "sha256" in header and header["sha256"] != _digest(t):
            raise UserError(f"{damaged} (its checksum does not match its contents); {fix}")
        if "npti_meta" in header:
            meta = json.loads(header["npti_meta"])
        else:  # written before the header held it (npti_lens 0.1)
            meta_path = path.with_suffix(".json")
            meta = read_json(meta_path) if meta_path.is_file() else {}
        meta.pop("n_tokens", None)
        stats = cls(
            n_tokens=int(t["n_tokens"][0]),
            n_active=t["n_active"],
            hist=t["hist"],
            sum=t["sum"],
            sum_sq=t["sum_sq"],
            meta=meta,
            resid_sum=t.get("resid_sum"),
            up_sum=t.get("up_sum"),
        )
        problem = stats.check()
        if problem:
            raise UserError(f"{damaged} ({problem}); {fix}")
        return stats

    def check(self) -> str | None:
        """What is inconsistent in these statistics, or None: shapes, dtypes, counts, histogram sums."""
        if self.n_active.dim() != 2 or self.hist.shape != (*self.n_active.shape, N_BINS):
            return f"shapes {tuple(self.n_active.shape)} and {tuple(self.hist.shape)} do not fit"
        if self.sum.shape != self.n_active.shape or self.sum_sq.shape != self.n_active.shape:
            return "sum and sum_sq do not have the shape of n_active"
        if self.n_active.dtype != torch.int64 or self.hist.dtype != torch.int64:
            return "counts are not integers"
        if (
            self.n_tokens < 0
            or bool((self.n_active < 0).any())
            or bool((self.n_active > self.n_tokens).any())
        ):
            return "counts outside 0 <= n_active <= n_tokens"
        if bool((self.hist < 0).any()) or bool((self.hist.sum(-1) != self.n_tokens).any()):
            return "histogram rows do not each sum to n_tokens"
        if not torch.equal(self.hist[..., 1:].sum(-1), self.n_active):
            return "n_active differs from the histogram's count above 0"
        if not bool(torch.isfinite(self.sum).all() & torch.isfinite(self.sum_sq).all()):
            return "non-finite sums"
        if self.resid_sum is not None and (
            self.resid_sum.dim() != 2
            or self.resid_sum.shape[0] != self.n_active.shape[0]
            or not bool(torch.isfinite(self.resid_sum).all())
        ):
            return "the residual sums do not fit the layers or are not finite"
        if self.up_sum is not None and (
            self.up_sum.shape != self.n_active.shape or not bool(torch.isfinite(self.up_sum).all())
        ):
            return "the up(x) sums do not fit the neurons or are not finite"
        return None


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().data if t.numel() else b"")
    return h.hexdigest()


def accumulate(stats: Stats, layer: int, acts: Float[Tensor, "tok d_mlp"]) -> None:
    """Add the activations of `tok` answer positions of one layer to `stats` (no n_tokens update)."""
    add_counts(stats.hist[layer], stats.n_active[layer], stats.sum[layer], stats.sum_sq[layer], acts)


def add_counts(hist: Tensor, n_active: Tensor, total: Tensor, total_sq: Tensor, acts: Tensor) -> None:
    """One layer's counts (any integer dtype) and float64 sums, added to in place from `acts`.

    Sync-free on a GPU: every count is a `scatter_add_` into the histogram (torch.bincount would read
    the indices' range back to the host), so a hook calling this never makes the host wait.
    """
    if acts.shape[0] == 0:
        return
    a = acts.float()
    d_mlp = a.shape[1]
    total += a.sum(0, dtype=torch.float64)
    total_sq += (a * a).sum(0, dtype=torch.float64)
    n_active += (a > 0).sum(0).to(n_active.dtype)  # bin 0 holds a <= 0
    offset = torch.arange(d_mlp, device=a.device) * N_BINS
    flat = hist.view(-1)
    ones = torch.ones(1, dtype=hist.dtype, device=a.device)
    rows = max(1, CHUNK_ELEMENTS // d_mlp)
    for start in range(0, a.shape[0], rows):
        idx = (bin_index(a[start : start + rows]) + offset).view(-1)
        flat.scatter_add_(0, idx, ones.expand(idx.numel()))


# ----- statistics of a search run folder ----------------------------------------------------------


def stats_path(run: str | Path, trait: str, pole: str) -> Path:
    return Path(run) / STATS_DIR / f"{pole_name(trait, pole)}.safetensors"


def load_run_stats(run: str | Path, trait: str, pole: str) -> Stats:
    path = stats_path(run, trait, pole)
    if not path.is_file():
        raise UserError(f"{run}: no statistics for {pole_name(trait, pole)} ({path}); run npti search")
    stats = Stats.load(path)
    if not stats.meta.get("complete"):
        raise UserError(
            f"{path}: search of {pole_name(trait, pole)} is unfinished; finish it with npti search --resume"
        )
    return stats
