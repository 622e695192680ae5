"""Losses and label codings for slide-level (multiple-instance) classification.

- Ordinal grades (PANDA's ISUP 0-5): a grade ``g`` of ``K`` grades is coded as ``K - 1`` binary targets
  ``[g > 0, g > 1, ..., g > K - 2]`` (:func:`ordinal_encode`); the network gives one logit per target,
  trained with :class:`OrdinalBCELoss`. :func:`ordinal_class_probabilities` turns the logits into ``K``
  class probabilities (differences of the cumulative probabilities, made monotone), and
  :func:`ordinal_decode` gives the grade: the number of cumulative probabilities above 0.5.
- :class:`AttentionEntropyRegularisedLoss` adds ``weight x`` the mean normalised entropy of the
  attention of an attention-MIL network (:class:`medbundle.pathology.networks.MILClassifier`) to a slide
  loss: a positive weight favours attention on few patches, a negative one spreads it.
- :class:`AttentionSupervisedLoss` adds ``weight x`` the cross-entropy between the attention and the
  uniform distribution over the annotated tumour patches of each tumour bag: every tumour patch is pushed
  above every other patch of its slide, so the most attended patches are the tumour (the slide loss alone
  only asks the pooled bag to be right, which a few tumour patches among hundreds rarely teach).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "AttentionEntropyRegularisedLoss",
    "AttentionSupervisedLoss",
    "OrdinalBCELoss",
    "grade_from_class_probabilities",
    "last_attention",
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


def last_attention(network: nn.Module) -> torch.Tensor:
    """The ``(B, N)`` attention of the network's latest forward pass (``network.last_attention``, set by
    :meth:`medbundle.pathology.networks.MILClassifier.forward`); a DDP-wrapped network is unwrapped.

    Raises:
        RuntimeError: the network kept no attention.
    """
    net = getattr(network, "module", network)
    att = getattr(net, "last_attention", None)
    if att is None:
        raise RuntimeError("the network kept no attention (last_attention is None); is it a MILClassifier?")
    return att


class AttentionEntropyRegularisedLoss(nn.Module):
    """``loss(pred, target) + weight * mean(normalised attention entropy)``.

    The attention is read from ``network.last_attention`` (set by
    :meth:`medbundle.pathology.networks.MILClassifier.forward` on the same step; a DDP-wrapped network is
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
        from medbundle.pathology.networks import attention_entropy

        base = self.loss(pred, target)
        if self.weight == 0.0:
            return base
        att = last_attention(self._network[0])
        ent = attention_entropy(att).mean()
        self.last_entropy = float(ent.detach())
        return base + self.weight * ent


class AttentionSupervisedLoss(nn.Module):
    """``loss(pred, slide target) + weight * mean over tumour bags of -mean_{tumour patches} log a_i``.

    The target is ``(B,)`` slide labels (the term is off) or ``(B, 1 + N)`` ``[slide label, patch labels]``
    as :class:`~medbundle.pathology.transforms.BagTargetd` writes it: patch label 1 = tumour, 0 = not,
    -1 = unknown. The attention ``a`` is read from ``network.last_attention`` (as
    :class:`AttentionEntropyRegularisedLoss` does) and renormalised over the known patches; the term is the
    cross-entropy between it and the uniform distribution over the bag's tumour patches, so it is smallest
    when every tumour patch, not only the easiest one, outranks every other patch. Bags without a tumour
    patch add nothing to it (normal slides are left to the slide loss).

    Args:
        loss: the slide loss, called with the ``(B,)`` slide labels (long).
        network: the MIL network whose attention is supervised.
        weight: weight of the attention term; 0 switches it off.
    """

    def __init__(self, loss: nn.Module, network: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        self.loss = loss
        self.weight = float(weight)
        self._network = [network]  # not a registered submodule
        self.last_attention_loss: float | None = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(target)
        patch = None
        if t.ndim == 2 and t.shape[1] > 1:
            slide, patch = t[:, 0], t[:, 1:]
        else:
            slide = t.reshape(t.shape[0], -1)[:, 0] if t.ndim == 2 else t
        if slide.is_floating_point():
            slide = slide.round().long()
        base = self.loss(pred, slide)
        if self.weight == 0.0 or patch is None:
            return base
        pos = patch == 1
        bags = pos.any(dim=1)
        if not bool(bags.any()):
            self.last_attention_loss = 0.0
            return base
        att = last_attention(self._network[0])
        if att.shape != patch.shape:
            raise ValueError(f"attention {tuple(att.shape)} and patch labels {tuple(patch.shape)} differ in shape")
        a = att.float()
        known = (patch >= 0).to(a.dtype)
        log_a = a.clamp_min(1e-30).log() - (a * known).sum(dim=1, keepdim=True).clamp_min(1e-30).log()
        posf = pos.float()
        per_bag = -(log_a * posf).sum(dim=1) / posf.sum(dim=1).clamp_min(1.0)
        term = per_bag[bags].mean()
        self.last_attention_loss = float(term.detach())
        return base + self.weight * term
