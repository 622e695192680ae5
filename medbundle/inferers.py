"""Whole-volume inference for patch-trained classifiers.

MONAI's :class:`~monai.inferers.SlidingWindowInferer` stitches *spatial* outputs; a classifier returns
one logit vector per window, which it cannot blend. :class:`SlidingWindowClassifier` runs the network
over every window of the whole (padded) volume and aggregates the window logits into one prediction per
volume by a configurable rule (mean, max, top-k mean), the usual multiple-instance readouts for a
volume label learnt from patches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import ensure_tuple, ensure_tuple_rep

__all__ = ["AGGREGATIONS", "SlidingWindowClassifier", "aggregate_logits", "window_margin", "window_starts"]

AGGREGATIONS = ("mean", "max", "topk_mean")


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``roi`` covering ``size`` (the last window ends at the edge).

    Windows step by ``max(1, round(roi * (1 - overlap)))``; ``size <= roi`` gives ``[0]``.
    """
    if size <= roi:
        return [0]
    step = max(1, int(round(roi * (1.0 - overlap))))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def window_margin(roi_size: Sequence[int] | int, overlap: float) -> list[int]:
    """Half the sliding-window step per axis, ``round(roi * (1 - overlap) / 2)`` voxels.

    Consecutive inference windows start one step apart, so a finding lies within this distance of some window's
    centre; training patches whose finding is anywhere within it of their centre
    (:class:`~medbundle.ct.transforms.CropWeightMapd` ``lesion_margin``) show the network the offsets inference
    shows it.
    """
    return [int(round(r * (1.0 - overlap) / 2)) for r in ensure_tuple(roi_size)]


def aggregate_logits(logits: torch.Tensor, rule: str = "mean", top_k: int = 3) -> torch.Tensor:
    """Reduce window logits ``(n_windows, n_classes)`` to ``(n_classes,)``.

    ``mean`` averages every window; ``max`` takes, per class, its largest logit (a finding seen in any
    window counts); ``topk_mean`` averages, per class, its ``top_k`` largest logits (between the two, and
    less sensitive to a single spurious window).
    """
    if rule == "mean":
        return logits.mean(0)
    if rule == "max":
        return logits.max(0).values
    if rule == "topk_mean":
        k = max(1, min(int(top_k), logits.shape[0]))
        return logits.topk(k, dim=0).values.mean(0)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {rule!r}")


class SlidingWindowClassifier(Inferer):
    """Classify whole volumes with a network trained on patches.

    Args:
        roi_size: window (patch) size, one int per spatial dim or one for all.
        sw_batch_size: windows per forward pass.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        aggregation: ``"mean"``, ``"max"`` or ``"topk_mean"`` (see :func:`aggregate_logits`).
        top_k: windows averaged by ``topk_mean``.
        pad_value: value used to pad a volume smaller than the window (after intensity scaling, 0 is air for the CT
            windows in :mod:`medbundle.ct.transforms`).
        activation: the space the windows are aggregated in. ``"none"`` aggregates raw logits. ``"softmax"`` turns each
            window into class probabilities, aggregates those, renormalises them to sum to 1 and returns their
            logarithm, so a following softmax gives the aggregated probabilities back. ``"sigmoid"`` does the same per
            class and returns ``logit(p)``. Aggregating probabilities is what makes ``max`` work for multi-class
            volumes: with raw logits, the "normal" logit is high in some window of every volume and its maximum drowns
            the finding's (measured on the synthetic CT test split: nodule AUROC 0.50 with logit-max, 0.78 with
            probability-max, same model).

    Call with ``inputs`` ``(B, C, *spatial)``; returns ``(B, n_classes)`` aggregated logits.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        aggregation: str = "mean",
        top_k: int = 3,
        pad_value: float = 0.0,
        activation: str = "none",
    ) -> None:
        super().__init__()
        if activation not in ("none", "softmax", "sigmoid"):
            raise ValueError(f"activation must be 'none', 'softmax' or 'sigmoid', got {activation!r}")
        self.activation = activation
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.roi_size = roi_size
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.aggregation = aggregation
        self.top_k = int(top_k)
        self.pad_value = float(pad_value)

    def window_logits(self, volume: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Logits of every window of one volume ``(C, *spatial)``: ``(n_windows, n_classes)``."""
        nd = volume.ndim - 1
        roi = [int(r) for r in ensure_tuple_rep(self.roi_size, nd)]
        pad: list[int] = []
        for size, r in zip(reversed(volume.shape[1:]), reversed(roi)):  # F.pad wants the last dim first
            extra = max(0, r - size)
            pad += [extra // 2, extra - extra // 2]
        if any(pad):
            volume = F.pad(volume, pad, mode="constant", value=self.pad_value)
        starts = [window_starts(s, r, self.overlap) for s, r in zip(volume.shape[1:], roi)]
        corners = list(itertools.product(*starts))
        out = []
        for i in range(0, len(corners), self.sw_batch_size):
            chunk = corners[i : i + self.sw_batch_size]
            patches = torch.stack(
                [volume[(slice(None), *[slice(c, c + r) for c, r in zip(corner, roi)])] for corner in chunk]
            )
            logits = network(patches, *args, **kwargs)
            out.append(logits.as_tensor() if hasattr(logits, "as_tensor") else logits)
        return torch.cat(out, 0)

    def aggregate(self, window_logits: torch.Tensor) -> torch.Tensor:
        """Window logits ``(n_windows, n_classes)`` to volume logits ``(n_classes,)`` (see ``activation``)."""
        eps = 1e-6
        if self.activation == "none":
            return aggregate_logits(window_logits, self.aggregation, self.top_k)
        if self.activation == "softmax":
            p = aggregate_logits(torch.softmax(window_logits.float(), dim=1), self.aggregation, self.top_k)
            return torch.log((p / p.sum().clamp_min(eps)).clamp_min(eps))
        p = aggregate_logits(torch.sigmoid(window_logits.float()), self.aggregation, self.top_k)
        p = p.clamp(eps, 1 - eps)
        return torch.log(p) - torch.log1p(-p)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        return torch.stack([self.aggregate(self.window_logits(v, network, *args, **kwargs)) for v in inputs])


