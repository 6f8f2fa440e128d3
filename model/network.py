"""The digit network: a small VGG-style CNN that also returns its activation maps.

One forward call gives the handler everything it needs: the class scores (already divided
by the calibration temperature) and the post-ReLU output of every convolutional layer, so
the page can show what the model "looked at" without a second pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

# Statistics of the MNIST training images (pixel values in [0, 1]). They live here, inside
# the network, so every caller hands the model plain [0, 1] images and nobody retypes them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass
class NetConfig:
    """Everything needed to rebuild the network; stored with every checkpoint and export."""

    channels: List[int] = field(default_factory=lambda: [32, 32, 64, 64, 128])
    # Indices of the conv layers followed by 2x2 max pooling.
    pool_after: List[int] = field(default_factory=lambda: [1, 3])
    dropout: float = 0.3
    num_classes: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Module):
    """3x3 convolution, batch norm, ReLU: the one building block of the network."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DigitNet(nn.Module):
    """Maps a batch of [0, 1] images of shape (N, 1, 28, 28) to (scores, activations).

    ``scores`` are logits divided by ``temperature`` (1 until calibration sets it), so
    ``softmax(scores)`` are the probabilities the API returns. ``activations`` holds one
    (N, C, H, W) tensor per convolutional layer, named by ``layer_names``.
    """

    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        self.config = config or NetConfig()
        chans = [1] + list(self.config.channels)
        self.convs = nn.ModuleList(ConvBlock(chans[i], chans[i + 1]) for i in range(len(chans) - 1))
        self.pool_after: List[int] = list(self.config.pool_after)
        self.layer_names: List[str] = [f"conv{i + 1}" for i in range(len(self.convs))]
        side = 28 // (2 ** len(self.pool_after))
        self.dropout = nn.Dropout(self.config.dropout)
        self.fc = nn.Linear(chans[-1] * side * side, self.config.num_classes)
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = (images - self.mean) / self.std
        activations: List[torch.Tensor] = []
        for i, block in enumerate(self.convs):
            x = block(x)
            activations.append(x)
            if i in self.pool_after:
                x = F.max_pool2d(x, 2)
        logits = self.fc(self.dropout(torch.flatten(x, 1)))
        return logits / self.temperature, activations


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
