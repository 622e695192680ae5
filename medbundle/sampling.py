"""Class-balanced sampling and label statistics for MONAI datalists.

What this adds over PyTorch and MONAI: :class:`torch.utils.data.WeightedRandomSampler` needs per-sample
weights, knows nothing of multi-label targets, and is not distributed-aware, while
:class:`torch.utils.data.DistributedSampler` and MONAI's ``DistributedWeightedRandomSampler`` do not
compute weights from labels. :class:`ClassBalancedSampler` computes the weights from the labels (single
or multi-label, with missing labels) and splits one global draw between DDP ranks without overlap.
:func:`label_counts` and :func:`imbalance_report` read the labels of a MONAI datalist (the JSON with
``"training"`` / ``"validation"`` / ``"testing"`` lists) for loss configs and for a quick look at the data.

Label conventions (shared by every function here):

- Single-label: a scalar per sample, the class index (int, or integral float); ``None`` / NaN is missing.
- Multi-label: a vector per sample (list or array of length C); entries ``>= 0.5`` count as positive,
  other numbers as negative, and ``None`` / NaN entries as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "sample_weights_for_balance",
    "ClassBalancedSampler",
    "train_sampler",
    "label_counts",
    "imbalance_report",
    "format_imbalance_report",
]

POSITIVE_THRESHOLD = 0.5


def _to_float_array(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        return np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"labels must be numeric (class indices or multi-hot vectors): {err}") from err


def _single_label_counts(arr: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Class counts for a (N,) array of class indices (NaN = missing, left out)."""
    valid = arr[~np.isnan(arr)]
    if np.any(valid != np.round(valid)) or np.any(valid < 0):
        bad = valid[(valid != np.round(valid)) | (valid < 0)][0]
        raise ValueError(
            f"single-label targets must be class indices 0, 1, 2, ... (found {bad}); "
            "for multi-label data give one vector per sample."
        )
    idx = valid.astype(np.int64)
    size = int(idx.max()) + 1 if idx.size else 0
    if num_classes is not None:
        if size > num_classes:
            raise ValueError(f"found class index {size - 1} but num_classes={num_classes}.")
        size = num_classes
    return np.bincount(idx, minlength=size)


def sample_weights_for_balance(labels: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-sample weights whose sampling balances the classes.

    Rules:

    - Single-label, ``labels`` of shape ``(N,)`` with class indices: ``w_i = 1 / count(y_i)``, so every
      class present gets the same total weight. Missing labels (NaN) are an error: drop those samples
      first.
    - Multi-label, ``labels`` of shape ``(N, C)`` (multi-hot, NaN = missing): a sample with at least one
      positive class gets ``w_i = max_{c positive in i} 1 / pos_count_c`` (its rarest positive class
      decides), and a sample without any positive (all negative or missing) gets
      ``1 / n_without_positive``. Each positive class and the "no finding" group then get roughly
      equal total weight; exactly equal when every sample has at most one positive class.

    Args:
        labels: ``(N,)`` class indices or ``(N, C)`` multi-hot labels.

    Returns:
        float64 array ``(N,)`` of non-negative, unnormalised weights.
    """
    arr = _to_float_array(labels)
    if arr.ndim == 1:
        if np.isnan(arr).any():
            raise ValueError(
                f"{int(np.isnan(arr).sum())} single-label targets are missing (NaN); drop those samples "
                "before building balance weights."
            )
        counts = _single_label_counts(arr)
        return 1.0 / counts[arr.astype(np.int64)].astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"labels must have shape (N,) or (N, C), got {arr.shape}.")
    positive = ~np.isnan(arr) & (np.nan_to_num(arr, nan=0.0) >= POSITIVE_THRESHOLD)
    pos_count = positive.sum(0)
    inv = np.zeros(arr.shape[1], dtype=np.float64)
    inv[pos_count > 0] = 1.0 / pos_count[pos_count > 0]
    weights = (positive * inv[None, :]).max(axis=1, initial=0.0)
    no_pos = ~positive.any(axis=1)
    if no_pos.any():
        weights[no_pos] = 1.0 / no_pos.sum()
    return weights


class ClassBalancedSampler(Sampler[int]):
    """Draw dataset indices with probability proportional to :func:`sample_weights_for_balance`.

    Distributed use works like :class:`torch.utils.data.DistributedSampler`: each epoch one global
    sequence of ``num_samples`` indices is drawn from a generator seeded with ``(seed, epoch)`` (the same
    on every rank), padded by repeating it from the start (or truncated when ``drop_last``) to a multiple
    of ``num_replicas``, and rank ``r`` takes positions ``r, r + num_replicas, ...``. The ranks' shares are
    therefore disjoint as positions and together form the global sequence.

    Epochs: :meth:`set_epoch` selects the epoch of the next iteration, as for ``DistributedSampler``. Each
    further iteration without a new ``set_epoch`` call advances the epoch by one, so the draws still change
    from epoch to epoch when nothing calls ``set_epoch`` (MONAI workflows call it only for
    ``DistributedSampler`` instances). All ranks iterate equally often, so they stay in step.
    :meth:`state_dict` / :meth:`load_state_dict` keep that counter across a resumed training.

    Args:
        labels: ``(N,)`` class indices or ``(N, C)`` multi-hot labels (NaN = missing), in dataset order.
        num_samples: indices drawn per epoch over all ranks; default N.
        replacement: draw with replacement (the usual choice for oversampling). Without replacement, ``num_samples`` may
            not exceed the number of samples with non-zero weight.
        num_replicas: number of ranks; default the world size when ``torch.distributed`` is initialised, else 1.
        rank: this rank; default the process rank when ``torch.distributed`` is initialised, else 0.
        seed: base seed; must be the same on all ranks.
        drop_last: truncate the global sequence to a multiple of ``num_replicas`` instead of padding it.

    ``len(sampler)`` is the number of indices this rank yields per epoch.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray | torch.Tensor,
        num_samples: int | None = None,
        replacement: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.weights = sample_weights_for_balance(labels)
        n = self.weights.size
        if n == 0:
            raise ValueError("labels is empty; the sampler needs at least one sample.")
        self.num_samples = n if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.replacement = bool(replacement)
        n_drawable = int((self.weights > 0).sum())
        if not self.replacement and self.num_samples > n_drawable:
            raise ValueError(
                f"cannot draw {self.num_samples} samples without replacement from {n_drawable}; "
                "lower num_samples or use replacement=True."
            )
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}."
            )
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if self.drop_last:
            self.num_samples_per_rank = self.num_samples // self.num_replicas
            if self.num_samples_per_rank == 0:
                raise ValueError(
                    f"drop_last=True leaves no samples: num_samples={self.num_samples} < "
                    f"num_replicas={self.num_replicas}."
                )
        else:
            self.num_samples_per_rank = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.num_samples_per_rank * self.num_replicas
        self.epoch = 0
        self._iterations_since_set_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration; the draw depends on ``(seed, epoch)``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}.")
        self.epoch = int(epoch)
        self._iterations_since_set_epoch = 0

    def state_dict(self) -> dict[str, int]:
        """Where the epoch counter stands: ``{"epoch", "iterations_since_set_epoch"}`` (plain ints)."""
        return {"epoch": int(self.epoch), "iterations_since_set_epoch": int(self._iterations_since_set_epoch)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration draws what it would have drawn then."""
        self.set_epoch(int(state["epoch"]))
        self._iterations_since_set_epoch = int(state.get("iterations_since_set_epoch", 0))

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The global index sequence (``total_size`` entries, int64) of ``epoch``, before the rank split.

        Args:
            epoch: default the epoch last given to :meth:`set_epoch` (0 initially).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        p = self.weights / self.weights.sum()
        draw = rng.choice(self.weights.size, size=self.num_samples, replace=self.replacement, p=p)
        if self.total_size <= draw.size:
            return draw[: self.total_size].astype(np.int64)
        return np.resize(draw, self.total_size).astype(np.int64)  # repeats from the start to pad

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch + self._iterations_since_set_epoch
        self._iterations_since_set_epoch += 1
        return iter(self.global_indices(epoch)[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples_per_rank


# ----------------------------------------------------------------------------- datalist statistics


def _is_vector(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim >= 1
    return False


def _scalar(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        return float(value.item())
    raise ValueError(f"{where}: label {value!r} is not a number (class index, 0/1 entry, null or NaN).")


def _labels_from_datalist(datalist: Sequence[dict], label_key: str) -> tuple[bool, np.ndarray]:
    """Return (multilabel, labels) with labels ``(N,)`` or ``(N, C)`` float64, NaN for missing."""
    if len(datalist) == 0:
        raise ValueError("the datalist is empty.")
    values = []
    for i, item in enumerate(datalist):
        if not isinstance(item, dict):
            raise ValueError(f"datalist item {i} is a {type(item).__name__}, expected a dict.")
        if label_key not in item:
            raise ValueError(f"datalist item {i} has no {label_key!r} key (keys: {sorted(item)}).")
        values.append(item[label_key])
    kinds = {_is_vector(v) for v in values if v is not None}
    if not kinds:
        raise ValueError(f"every {label_key!r} value in the datalist is missing (null).")
    if len(kinds) > 1:
        raise ValueError(
            f"{label_key!r} mixes scalars (single-label) and vectors (multi-label) across items."
        )
    if kinds == {False}:
        return False, np.array([_scalar(v, f"item {i}") for i, v in enumerate(values)], dtype=np.float64)
    lengths = {len(v) for v in values if v is not None}
    if len(lengths) != 1:
        raise ValueError(f"multi-label {label_key!r} vectors have different lengths: {sorted(lengths)}.")
    c = lengths.pop()
    rows = []
    for i, v in enumerate(values):
        if v is None:
            rows.append([math.nan] * c)
        else:
            rows.append([_scalar(e, f"item {i}") for e in (v.tolist() if hasattr(v, "tolist") else v)])
    return True, np.array(rows, dtype=np.float64).reshape(len(values), c)


def label_counts(datalist: Sequence[dict], label_key: str = "label", num_classes: int | None = None) -> dict:
    """Count labels in a MONAI datalist (a list of dicts), e.g. to configure a weighted loss.

    Returns, with plain Python ints:

    - multi-label: ``{"multilabel": True, "n": N, "num_classes": C, "pos": [...], "neg": [...],
      "missing": [...]}`` with per-class positive, negative and missing (NaN / null) counts;
    - single-label: ``{"multilabel": False, "n": N, "num_classes": K, "counts": [...], "missing": m}``
      with per-class counts (K = ``num_classes`` or the largest index + 1) and the number of samples
      whose label is missing.

    ``n`` is the number of items, including those with missing labels.

    Args:
        datalist: list of dicts, each with ``label_key``.
        label_key: key of the label in each dict.
        num_classes: single-label only: pad the counts to this many classes.
    """
    multilabel, labels = _labels_from_datalist(datalist, label_key)
    n = int(labels.shape[0])
    if multilabel:
        missing = np.isnan(labels)
        positive = ~missing & (np.nan_to_num(labels, nan=0.0) >= POSITIVE_THRESHOLD)
        negative = ~missing & ~positive
        return {
            "multilabel": True,
            "n": n,
            "num_classes": int(labels.shape[1]),
            "pos": [int(v) for v in positive.sum(0)],
            "neg": [int(v) for v in negative.sum(0)],
            "missing": [int(v) for v in missing.sum(0)],
        }
    counts = _single_label_counts(labels, num_classes)
    return {
        "multilabel": False,
        "n": n,
        "num_classes": int(counts.size),
        "counts": [int(v) for v in counts],
        "missing": int(np.isnan(labels).sum()),
    }


def _load_split(datalist: str | Path | dict | list, split: str) -> list:
    if isinstance(datalist, (str, Path)):
        path = Path(datalist)
        try:
            with open(path, encoding="utf-8") as f:
                datalist = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the datalist JSON {path}: {err}") from err
    if isinstance(datalist, dict):
        if split not in datalist:
            raise ValueError(f"the datalist has no {split!r} split; available keys: {sorted(datalist)}.")
        datalist = datalist[split]
    if not isinstance(datalist, list):
        raise ValueError(f"split {split!r} must be a list of dicts, got {type(datalist).__name__}.")
    return datalist


def imbalance_report(
    datalist: str | Path | dict | list,
    split: str = "training",
    label_key: str = "label",
    class_names: Sequence[str] | None = None,
) -> dict:
    """Per-class label statistics of one split of a MONAI datalist.

    Args:
        datalist: path to a datalist JSON (``{"training": [...], "validation": [...], ...}``), the loaded dict, or one
            split's list of dicts (then ``split`` is only used as a label).
        split: which list to read from a dict.
        label_key: key of the label in each item.
        class_names: names for the C classes; default ``"class_0"``, ``"class_1"``, ...

    Returns:
        dict with ``split``, ``multilabel``, ``n_samples``, ``num_classes``, ``imbalance_factor`` (largest
        class count / smallest non-zero class count; None when no class has samples),
        ``n_samples_with_missing`` (samples with at least one missing label) and ``classes``: one dict per
        class with ``name``, ``count`` (samples of the class; positives for multi-label), ``prevalence``
        (single-label: count / labelled samples; multi-label: pos / (pos + neg), None without labels),
        ``missing`` (multi-label: missing entries; single-label: 0) and, for multi-label, ``negatives`` and
        ``pos_neg_ratio`` (pos / neg, None when neg = 0).
    """
    items = _load_split(datalist, split)
    stats = label_counts(items, label_key, num_classes=len(class_names) if class_names is not None else None)
    c = stats["num_classes"]
    names = [f"class_{i}" for i in range(c)] if class_names is None else [str(s) for s in class_names]
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names but the labels have {c} classes.")
    classes = []
    if stats["multilabel"]:
        counts = stats["pos"]
        for i in range(c):
            pos, neg = stats["pos"][i], stats["neg"][i]
            classes.append(
                {
                    "name": names[i],
                    "count": pos,
                    "negatives": neg,
                    "prevalence": pos / (pos + neg) if pos + neg else None,
                    "pos_neg_ratio": pos / neg if neg else None,
                    "missing": stats["missing"][i],
                }
            )
        _, labels = _labels_from_datalist(items, label_key)
        n_with_missing = int(np.isnan(labels).any(axis=1).sum())
    else:
        counts = stats["counts"]
        labelled = stats["n"] - stats["missing"]
        for i in range(c):
            classes.append(
                {
                    "name": names[i],
                    "count": counts[i],
                    "prevalence": counts[i] / labelled if labelled else None,
                    "missing": 0,
                }
            )
        n_with_missing = stats["missing"]
    nonzero = [v for v in counts if v > 0]
    return {
        "split": split,
        "multilabel": stats["multilabel"],
        "n_samples": stats["n"],
        "num_classes": c,
        "imbalance_factor": max(nonzero) / min(nonzero) if nonzero else None,
        "n_samples_with_missing": n_with_missing,
        "classes": classes,
    }


def format_imbalance_report(report: dict) -> str:
    """Render :func:`imbalance_report` output as an aligned plain-text table.

    Columns: class, count, prevalence (percent), and for multi-label also negatives, pos/neg and missing.
    A summary line gives the split, sample and class numbers and the imbalance factor.
    """
    multilabel = bool(report["multilabel"])
    header = ["class", "count", "prevalence"]
    if multilabel:
        header += ["negatives", "pos/neg", "missing"]

    def fmt(value: Any, kind: str) -> str:
        if value is None:
            return "-"
        if kind == "pct":
            return f"{100.0 * value:.2f}%"
        if kind == "ratio":
            return f"{value:.3f}"
        return str(value)

    rows = []
    for cls in report["classes"]:
        row = [str(cls["name"]), fmt(cls["count"], "int"), fmt(cls["prevalence"], "pct")]
        if multilabel:
            row += [
                fmt(cls["negatives"], "int"),
                fmt(cls["pos_neg_ratio"], "ratio"),
                fmt(cls["missing"], "int"),
            ]
        rows.append(row)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest])

    factor = report["imbalance_factor"]
    summary = (
        f"split: {report['split']}  samples: {report['n_samples']}  classes: {report['num_classes']}  "
        f"{'multi-label' if multilabel else 'single-label'}  "
        f"imbalance factor (max/min non-zero count): {'-' if factor is None else f'{factor:.2f}'}  "
        f"samples with missing labels: {report['n_samples_with_missing']}"
    )
    table = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    return "\n".join([summary, *table])


def train_sampler(
    dataset: Any,
    balanced: bool = False,
    distributed: bool = False,
    label_key: str = "label",
    num_replicas: int | None = None,
    rank: int | None = None,
    seed: int = 0,
    labels: Sequence | None = None,
) -> Sampler | None:
    """The training sampler a bundle config asks for, in one place.

    - ``balanced``: :class:`ClassBalancedSampler` over ``labels`` (default ``dataset.data[i][label_key]``,
      the items a ``DiskCacheDataset`` kept; pass ``labels`` when those hold label files, see
      :mod:`medbundle.io.class_labels`); it splits its draws across ranks by itself when distributed.
    - ``distributed`` only: MONAI's ``DistributedSampler`` (shuffled, evenly divisible shards).
    - neither: ``None`` (the data loader shuffles).

    ``num_replicas``/``rank`` default to the initialised process group.
    """
    if balanced:
        if labels is None:
            labels = [item[label_key] for item in dataset.data]
        elif len(labels) != len(dataset):
            raise ValueError(f"train_sampler got {len(labels)} labels for a dataset of {len(dataset)} items")
        return ClassBalancedSampler(labels, num_replicas=num_replicas, rank=rank, seed=seed)
    if distributed:
        from monai.data import DistributedSampler

        return DistributedSampler(dataset, even_divisible=True, num_replicas=num_replicas, rank=rank, shuffle=True)
    return None

