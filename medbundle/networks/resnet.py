"""A MONAI 3D ResNet selected by depth, with optional gradient checkpointing of its stages.

(No ``from __future__ import annotations`` here: TorchScript must read the annotations as types.)
"""


from typing import Any

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import get_inplanes
from torch.utils.checkpoint import checkpoint

__all__ = ["RESNET_DEPTHS", "ResNetClassifier"]

#: depth -> (block type, blocks per stage), as in MONAI's resnet10 ... resnet50 factories.
RESNET_DEPTHS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


class ResNetClassifier(ResNet):
    """MONAI :class:`~monai.networks.nets.ResNet` chosen by ``depth`` (10/18/34/50), with switchable
    gradient checkpointing.

    What it adds over MONAI's ``resnet18(...)`` factories: the depth is a config value, and with
    ``gradient_checkpointing=True`` the stem (first convolution, normalisation, activation, pooling, whose
    full-width activations at half resolution are the largest) and each of the four residual stages are
    recomputed in the backward pass instead of keeping their activations (``torch.utils.checkpoint``,
    non-reentrant), which cuts training memory for large 3D patches at the cost of one more forward per
    stage. Outputs, gradients and the
    state dict are identical either way, so checkpoints load in both modes; TorchScript export works
    (the checkpointed path is only taken in training mode and is skipped by the scripting compiler).

    Args:
        depth: 10, 18, 34 or 50.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: outputs (logits).
        widen_factor: channel multiplier (0.5 halves every stage's width).
        gradient_checkpointing: recompute stage activations in backward.
        kwargs: other :class:`~monai.networks.nets.ResNet` arguments (``conv1_t_stride``, ``no_max_pool``,
            ``shortcut_type``, ``norm`` ...).

    Input ``(B, in_channels, *spatial)``, output ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        depth: int = 18,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        widen_factor: float = 1.0,
        gradient_checkpointing: bool = False,
        conv1_t_stride: int = 2,
        **kwargs: Any,
    ) -> None:
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        block, layers = RESNET_DEPTHS[depth]
        super().__init__(
            block=block,
            layers=layers,
            block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            widen_factor=widen_factor,
            conv1_t_stride=conv1_t_stride,
            **kwargs,
        )
        self.gradient_checkpointing = bool(gradient_checkpointing)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        return x

    @torch.jit.unused
    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpoint(self._stem, x, use_reentrant=False)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint(stage, x, use_reentrant=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            x = self._checkpointed(x)
        else:
            x = self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        if self.fc is not None:
            x = self.fc(x)
        return x
