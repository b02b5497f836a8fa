"""Models that call einops in ``forward``, for tests/test_einops.py: the blocks live in this file (another file than
the test's), one calling ``rearrange`` by its imported name, one through the ``einops`` module."""

from __future__ import annotations

import einops
import torch
from einops import rearrange, reduce
from einops.layers.torch import Rearrange, Reduce
from torch import nn


class TokenMixer(nn.Module):
    """Mixes the tokens of ``[B, N, D]``: ``rearrange`` by its imported name."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rearrange(self.norm(x), "b n d -> b d n")
        return x + rearrange(self.mlp(y), "b d n -> b n d")


class ChannelMixer(nn.Module):
    """Mixes the channels of ``[B, N, D]`` on a ``[B, D, N]`` view: ``einops.rearrange`` through the module."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Conv1d(dim, 2 * dim, 1)
        self.down = nn.Conv1d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(torch.relu(self.up(einops.rearrange(x, "b n d -> b d n"))))
        return x + einops.rearrange(y, "b d n -> b n d")


class Mixer(nn.Module):
    """An MLP-Mixer on ``[B, 3, size, size]``: patches by a strided conv, tokens by ``rearrange``, a mean over
    the tokens by ``reduce``."""

    def __init__(self, dim: int = 8, patch: int = 4, size: int = 16, depth: int = 2, classes: int = 3) -> None:
        super().__init__()
        tokens = (size // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*(nn.Sequential(TokenMixer(tokens, dim), ChannelMixer(dim)) for _ in range(depth)))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.stem(x), "b c h w -> b (h w) c")
        return self.head(reduce(self.blocks(x), "b n d -> b d", "mean"))


class LayerNet(nn.Module):
    """A CNN whose reshapes are einops layers: channels last for a Linear and back, a max over row pairs, a
    flatten with the channels outermost into the head."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.last = Rearrange("b c h w -> b h w c")
        self.mix = nn.Linear(width, width)
        self.first = Rearrange("b h w c -> b c h w")
        self.pool = Reduce("b c (h h2) w -> b c h w", "max", h2=2)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.flat = Rearrange("b c h w -> b (c h w)")
        self.head = nn.Linear(width * 9, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.first(torch.relu(self.mix(self.last(self.conv(x))))))
        y = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(y)), 3)
        return self.head(self.flat(y))
