"""Building blocks that the focal, class-balanced and weighted losses share: argument checks, NaN-masked
reduction, per-class vectors, target preparation, and the focal terms themselves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CountsLike", "as_counts", "channel_vector", "check_reduction", "masked_reduce",
           "prepare_class_index_target", "prepare_multilabel", "sigmoid_focal_terms", "softmax_focal_terms"]

CountsLike = Sequence[float] | np.ndarray | torch.Tensor


_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``"mean"``, ``"sum"``, ``"none"``, else raise ValueError."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Unsupported reduction {reduction!r}; use one of {list(_REDUCTIONS)}.")
    return reduction


def masked_reduce(loss: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce an element-wise loss, leaving out the elements where ``valid`` is False.

    Invalid elements are set to 0 with :func:`torch.where` (never multiplied), so NaN values there do not
    reach the result. ``"mean"`` divides by the number of valid elements; when there are none it returns
    0 (still attached to the graph, so ``backward()`` works and gives zero gradients).
    """
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.numel() if valid is None else valid.sum()
    if valid is None:
        return loss.sum() / max(count, 1)
    return loss.sum() / count.clamp(min=1).to(loss.dtype)


def channel_vector(
    values: float | Sequence[float] | torch.Tensor, name: str, like: torch.Tensor
) -> torch.Tensor:
    """Turn a per-class vector of length C into a tensor that broadcasts over ``like`` (B, C, ...)."""
    vec = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if vec.ndim == 0:
        return vec
    if vec.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D per-class vector, got shape {tuple(vec.shape)}.")
    if like.ndim < 2 or like.shape[1] != vec.numel():
        raise ValueError(
            f"{name} has {vec.numel()} entries but the input has shape {tuple(like.shape)}; a per-class "
            f"{name} needs input of shape (B, C, ...) with C == {vec.numel()} classes on dim 1."
        )
    return vec.view(1, -1, *([1] * (like.ndim - 2)))


def prepare_multilabel(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a multi-label (input, target) pair and return (target with NaN -> 0, validity mask)."""
    if input.shape != target.shape:
        raise ValueError(
            f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same shape for a "
            "multi-label loss (one logit per class and per element)."
        )
    if not target.is_floating_point():
        target = target.to(input.dtype if input.is_floating_point() else torch.float32)
    valid = ~torch.isnan(target)
    target = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
    return target, valid


def prepare_class_index_target(input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Return class-index targets of shape ``(B, ...)`` (long) for logits of shape ``(B, C, ...)``.

    Accepts ``(B, ...)`` or ``(B, 1, ...)`` targets, integer or integral floating point values. Raises a
    ValueError when a non-ignored value is outside ``[0, C)``.
    """
    if input.ndim < 2:
        raise ValueError(f"logits must have shape (B, C, ...), got {tuple(input.shape)}.")
    if target.ndim == input.ndim and target.shape[1] == 1:
        target = target.squeeze(1)
    if target.shape != input.shape[:1] + input.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not fit logits {tuple(input.shape)}: expected class "
            f"indices of shape {(input.shape[0], *input.shape[2:])} or "
            f"{(input.shape[0], 1, *input.shape[2:])}."
        )
    if target.is_floating_point():
        if torch.isnan(target).any() or (target != target.round()).any():
            raise ValueError(
                "class-index target holds non-integer values; pass integer class indices "
                "(for soft or multi-hot targets use a multi-label loss)."
            )
        target = target.long()
    elif target.dtype == torch.bool:
        target = target.long()
    num_classes = input.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        raise ValueError(
            f"target holds class indices outside [0, {num_classes}) (e.g. {int(target[bad][0])}); "
            f"labels must be 0..{num_classes - 1} or ignore_index={ignore_index}."
        )
    return target


def softmax_focal_terms(
    input: torch.Tensor, target: torch.Tensor, gamma: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Element-wise ``-(1 - p_t)**gamma * log(p_t)`` for class-index targets.

    Returns (loss of shape (B, ...), valid mask, target with ignored entries replaced by 0).
    """
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
    log_p = F.log_softmax(input.float(), dim=1)
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    if gamma == 0:
        return -log_pt, valid, safe_target
    one_minus_pt = -torch.expm1(log_pt)  # 1 - p_t, precise when p_t is close to 1
    loss = -(one_minus_pt.clamp(min=torch.finfo(one_minus_pt.dtype).tiny) ** gamma) * log_pt
    return loss, valid, safe_target


def sigmoid_focal_terms(input: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Element-wise ``BCE(x, t) * (1 - p_t)**gamma`` with ``p_t = p t + (1 - p)(1 - t)`` (no alpha)."""
    x = input.float()
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    # 1 - p_t = p (1 - t) + (1 - p) t; sigmoid(-x) is more precise than 1 - sigmoid(x) for large x.
    one_minus_pt = torch.sigmoid(x) * (1.0 - t) + torch.sigmoid(-x) * t
    if gamma == 0:
        return bce
    # the floor keeps the gradient finite for gamma < 1 when a probability saturates to exactly 0 or 1
    return bce * one_minus_pt.clamp(min=torch.finfo(one_minus_pt.dtype).tiny) ** gamma


def as_counts(counts: CountsLike, name: str = "counts") -> np.ndarray:
    """Validate label counts and return them as a float64 vector."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of per-class counts, got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {arr.tolist()}.")
    return arr
