"""Gated attention multiple-instance learning (Ilse, Tomczak and Welling, ICML 2018) over a CNN backbone.

MONAI's ``MILModel`` (``monai.networks.nets.milmodel``) pools with attention or a transformer over a
torchvision ResNet but does not return the attention weights, has no gated attention readout for a
single bag of arbitrary length fed in chunks, and cannot be trained on cached features. This module adds:

- :class:`GatedAttentionPooling`: ``a = softmax_n(w^T (tanh(V h_n) * sigmoid(U h_n)))``,
  ``z = sum_n a_n h_n`` (``gated=False`` gives the plain ``tanh`` attention of the same paper), with an
  optional mask for padded bags;
- :class:`MILClassifier`: any patch CNN (a torchvision ResNet with its ``fc`` removed, a MONAI ResNet
  with ``feed_forward=False``, ...) embeds each patch, a projection and the gated attention pool the bag,
  and a linear layer gives the slide logits. It returns the attention weights
  (:meth:`~MILClassifier.forward_with_attention`; :meth:`~MILClassifier.forward` keeps them in
  ``last_attention`` for the entropy regulariser), embeds patches and pools embeddings separately so
  whole slides can be inferred in chunks, and can freeze the backbone to train on cached features.

(No ``from __future__ import annotations`` here: TorchScript must read the annotations as types.)
"""

import math

import torch
from torch import nn

__all__ = ["GatedAttentionPooling", "MILClassifier", "attention_entropy"]


class GatedAttentionPooling(nn.Module):
    """Gated attention pooling of a bag of instance embeddings.

    Args:
        in_features: embedding size ``D``.
        attention_dim: hidden size ``L`` of the attention network.
        gated: use the gated form (tanh branch times sigmoid branch); False gives tanh attention only.
        dropout: dropout on the attention hidden layer (training only).

    Input ``h`` ``(B, N, D)`` and an optional ``mask`` ``(B, N)`` (True = real instance); returns
    ``(z (B, D), a (B, N))`` with ``a`` summing to 1 over the real instances of each bag.
    """

    def __init__(self, in_features: int, attention_dim: int = 128, gated: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.gated = bool(gated)
        self.attention_v = nn.Linear(in_features, attention_dim)
        self.attention_u = nn.Linear(in_features, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.dropout = nn.Dropout(dropout)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention scores ``(B, N)``."""
        a = torch.tanh(self.attention_v(h))
        if self.gated:
            a = a * torch.sigmoid(self.attention_u(h))
        return self.attention_w(self.dropout(a)).squeeze(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scores(h).float()
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=1)
        z = torch.bmm(a.unsqueeze(1).to(h.dtype), h).squeeze(1)
        return z, a


def attention_entropy(attention: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Entropy of each bag's attention ``(B, N) -> (B,)``; divided by ``log N`` when ``normalise``
    (0 = all weight on one instance, 1 = uniform), so it does not depend on the bag size."""
    a = attention.float().clamp_min(1e-12)
    ent = -(a * a.log()).sum(dim=-1)
    n = attention.shape[-1]
    if normalise:
        ent = ent / math.log(n) if n > 1 else ent * 0.0
    return ent


class MILClassifier(nn.Module):
    """Attention-MIL slide classifier: patch backbone -> projection -> gated attention -> linear.

    Args:
        backbone: patch encoder ``(n, 3, P, P) -> (n, D)``. A final ``fc`` ``nn.Linear`` (torchvision ResNets) is
            replaced by the identity and ``D`` read from it; otherwise ``feature_dim`` or a dummy forward of a
            ``input_size`` patch gives ``D``. ``None`` builds a head that takes features only.
        num_outputs: slide logits (2 for tumour/normal softmax, ``K - 1`` for ordinal grades).
        feature_dim: ``D`` when it cannot be read from the backbone (required when ``backbone`` is None).
        projection_dim: size of the ``Linear + ReLU + Dropout`` projection before attention; ``None`` or 0 skips it.
        attention_dim: hidden size of the attention network.
        gated: gated attention (Ilse et al.) or plain tanh attention.
        dropout: dropout in the projection and attention layers.
        freeze_backbone: the backbone gets no gradients and stays in eval mode (its BatchNorm statistics are frozen),
            for training the head on cached features.
        backbone_weights: a local state-dict file for the backbone (loaded with ``weights_only=True``); nothing is
            downloaded.
        input_size: patch side for the dummy forward.

    Inputs of :meth:`forward` / :meth:`forward_with_attention`:

    - ``(B, N, 3, P, P)``: ``B`` bags of ``N`` patches;
    - ``(N, 3, P, P)``: one bag of ``N`` patches (so MONAI's ``verify_net_in_out`` can feed ``(1, 3, P, P)``);
    - ``(B, N, D)``: ``B`` bags of ``N`` precomputed patch features.

    Outputs: logits ``(B, num_outputs)`` (and attention ``(B, N)``).
    """

    last_attention: torch.Tensor | None

    def __init__(
        self,
        backbone: nn.Module | None = None,
        num_outputs: int = 2,
        feature_dim: int | None = None,
        projection_dim: int | None = 256,
        attention_dim: int = 128,
        gated: bool = True,
        dropout: float = 0.25,
        freeze_backbone: bool = False,
        backbone_weights: str | None = None,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        if backbone is not None and backbone_weights:
            state = torch.load(str(backbone_weights), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            backbone.load_state_dict(state, strict=False)
        if backbone is not None and isinstance(getattr(backbone, "fc", None), nn.Linear):
            feature_dim = int(backbone.fc.in_features)
            backbone.fc = nn.Identity()
        if backbone is not None and feature_dim is None:
            was = backbone.training
            backbone.eval()
            with torch.no_grad():
                out = backbone(torch.zeros(1, 3, input_size, input_size))
            backbone.train(was)
            feature_dim = int(out.reshape(1, -1).shape[1])
        if feature_dim is None:
            raise ValueError("feature_dim is required when there is no backbone")
        self.has_backbone = backbone is not None
        self.backbone = backbone if backbone is not None else nn.Identity()
        self.feature_dim = int(feature_dim)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        d = self.feature_dim
        if projection_dim:
            self.projection = nn.Sequential(
                nn.Linear(d, int(projection_dim)), nn.ReLU(inplace=True), nn.Dropout(dropout)
            )
            d = int(projection_dim)
        else:
            self.projection = nn.Sequential(nn.Identity())
        self.embedding_dim = d
        self.attention = GatedAttentionPooling(d, attention_dim, gated=gated, dropout=dropout)
        self.classifier = nn.Linear(d, int(num_outputs))
        self.num_outputs = int(num_outputs)
        self.last_attention = None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    @torch.jit.export
    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(n, D)`` of patches ``(n, 3, P, P)``."""
        if not self.has_backbone:
            raise RuntimeError("this MILClassifier has no backbone; feed features (B, N, D)")
        f = self.backbone(patches)
        return f.reshape(f.shape[0], -1)

    @torch.jit.export
    def pool(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide logits ``(B, K)`` and attention ``(B, N)`` from backbone features ``(B, N, D)``."""
        h = self.projection(features)
        z, a = self.attention(h, mask)
        return self.classifier(z), a

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and attention for a batch of bags (see the class docstring for the input shapes)."""
        if x.dim() == 5:
            b, n = x.shape[0], x.shape[1]
            feats = self.embed(x.reshape(b * n, x.shape[2], x.shape[3], x.shape[4])).reshape(b, n, -1)
        elif x.dim() == 4:
            feats = self.embed(x).unsqueeze(0)
        elif x.dim() == 3:
            feats = x
        else:
            raise ValueError("MILClassifier expects (B, N, C, H, W) patches, (N, C, H, W) or (B, N, D) features")
        return self.pool(feats, None)

    @torch.jit.unused
    def _remember(self, attention: torch.Tensor) -> None:
        self.last_attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, attention = self.forward_with_attention(x)
        if not torch.jit.is_scripting():
            self._remember(attention)
        return logits
