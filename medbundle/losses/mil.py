"""Losses and label codings for slide-level (multiple-instance) classification.

- Ordinal grades (PANDA's ISUP 0-5): a grade ``g`` of ``K`` grades is coded as ``K - 1`` binary targets
  ``[g > 0, g > 1, ..., g > K - 2]`` (:func:`ordinal_encode`); the network gives one logit per target,
  trained with :class:`OrdinalBCELoss`. :func:`ordinal_class_probabilities` turns the logits into ``K``
  class probabilities (differences of the cumulative probabilities, made monotone), and
  :func:`ordinal_decode` gives the grade: the number of cumulative probabilities above 0.5.
- :class:`AttentionEntropyRegularisedLoss` adds ``weight x`` the mean normalised entropy of the
  attention of an attention-MIL network (:class:`medbundle.networks.mil.MILClassifier`) to a slide
  loss: a positive weight favours attention on few patches, a negative one spreads it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "AttentionEntropyRegularisedLoss",
    "OrdinalBCELoss",
    "grade_from_class_probabilities",
    "ordinal_class_probabilities",
    "ordinal_decode",
    "ordinal_encode",
]


def _as_index(target: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(target)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"grade targets must be (B,) or (B, 1) class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point() and bool(torch.any(t != t.round())):
        raise ValueError(f"grade targets must be whole numbers, got {t.tolist()}")
    return t.long()


def ordinal_encode(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Grades ``(B,)`` in ``0..num_classes-1`` -> ``(B, num_classes - 1)`` float ``[g > k]``."""
    g = _as_index(target)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        raise ValueError(f"grade out of range 0..{num_classes - 1}: {g.tolist()}")
    k = torch.arange(num_classes - 1, device=g.device)
    return (g[:, None] > k[None, :]).float()


def _cumulative(logits: torch.Tensor) -> torch.Tensor:
    """Monotone cumulative probabilities ``P(grade > k)`` (running minimum over k)."""
    return torch.cummin(torch.sigmoid(logits.float()), dim=-1).values


def ordinal_class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K - 1)`` ordinal logits -> ``(B, K)`` class probabilities (rows sum to 1)."""
    c = _cumulative(logits)
    one = torch.ones_like(c[..., :1])
    zero = torch.zeros_like(c[..., :1])
    upper = torch.cat([one, c], dim=-1)
    lower = torch.cat([c, zero], dim=-1)
    return (upper - lower).clamp_min(0.0)


def ordinal_decode(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K - 1)`` ordinal logits -> grades ``(B,)``: how many ``P(grade > k)`` exceed 0.5."""
    return (_cumulative(logits) > 0.5).sum(dim=-1)


def grade_from_class_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """The grade :func:`ordinal_decode` gives, from the class probabilities of
    :func:`ordinal_class_probabilities` (``P(grade > k)`` is the sum of the probabilities above k)."""
    p = torch.as_tensor(probs).float()
    tail = torch.flip(torch.cumsum(torch.flip(p, dims=[-1]), dim=-1), dims=[-1])[..., 1:]
    return (tail > 0.5).sum(dim=-1)


class OrdinalBCELoss(nn.Module):
    """Binary cross-entropy of ``K - 1`` ordinal logits against the coded grade (``g > k`` targets).

    Args:
        num_classes: number of grades ``K`` (6 for ISUP 0-5).
        pos_weight: optional ``(K - 1,)`` weights of the positive term per threshold.
    """

    def __init__(self, num_classes: int, pos_weight: torch.Tensor | list[float] | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ordinal coding needs at least 2 grades, got {num_classes}")
        self.num_classes = int(num_classes)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes - 1:
            raise ValueError(f"expected (B, {self.num_classes - 1}) ordinal logits, got {tuple(logits.shape)}")
        y = ordinal_encode(target.to(logits.device), self.num_classes)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight)


class AttentionEntropyRegularisedLoss(nn.Module):
    """``loss(pred, target) + weight * mean(normalised attention entropy)``.

    The attention is read from ``network.last_attention`` (set by
    :meth:`medbundle.networks.mil.MILClassifier.forward` on the same step; a DDP-wrapped network is
    unwrapped). The entropy is divided by ``log N`` so the term is in [0, 1] for any bag size.

    Args:
        loss: the slide loss (e.g. cross-entropy or :class:`OrdinalBCELoss`).
        network: the MIL network whose attention is regularised.
        weight: > 0 sharpens the attention, < 0 spreads it, 0 switches the term off.
    """

    def __init__(self, loss: nn.Module, network: nn.Module, weight: float = 0.0) -> None:
        super().__init__()
        self.loss = loss
        self.weight = float(weight)
        self._network = [network]  # a list, so the network is not registered (and saved) as a submodule
        self.last_entropy: float | None = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from medbundle.networks.mil import attention_entropy

        base = self.loss(pred, target)
        if self.weight == 0.0:
            return base
        net = self._network[0]
        net = getattr(net, "module", net)
        att = getattr(net, "last_attention", None)
        if att is None:
            raise RuntimeError("the network kept no attention (last_attention is None); is it a MILClassifier?")
        ent = attention_entropy(att).mean()
        self.last_entropy = float(ent.detach())
        return base + self.weight * ent
