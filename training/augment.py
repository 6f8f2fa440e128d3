"""Batch augmentation on the CPU, in torch: small affine warps, elastic wobble, stroke width.

The serving path already normalises size and position (``model.preprocess``), so the warps
stay small: they teach the network the variation that survives that normalisation, namely
slant, rotation, uneven strokes and pens thinner or thicker than MNIST's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEG = 12.0
SCALE = 0.12
SHEAR = 0.2
SHIFT = 0.12          # in grid units (1.0 = half the image): about 1.7 pixels
ELASTIC = 0.04        # amplitude of the smooth random displacement, grid units
P_THICKER, P_THINNER = 0.2, 0.1


def _uniform(n: int, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * bound


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly warp a (N, 1, 28, 28) batch of [0, 1] images; returns a new batch."""
    n = images.shape[0]
    angle = _uniform(n, math.radians(ROTATION_DEG), gen)
    scale = 1 + _uniform(n, SCALE, gen)
    shear = _uniform(n, SHEAR, gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear, _uniform(n, SHIFT, gen)], 1),
        torch.stack([sin, cos, _uniform(n, SHIFT, gen)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    coarse = (torch.rand(n, 2, 4, 4, generator=gen) * 2 - 1) * ELASTIC
    grid = grid + F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    pick = torch.rand(n, generator=gen).view(n, 1, 1, 1)
    thicker = F.max_pool2d(F.pad(out, (0, 1, 0, 1)), 2, stride=1)
    thinner = 0.5 * (out - F.max_pool2d(F.pad(-out, (0, 1, 0, 1)), 2, stride=1))
    out = torch.where(pick < P_THICKER, thicker, out)
    out = torch.where(pick > 1 - P_THINNER, thinner, out)
    return out.clamp_(0, 1)
