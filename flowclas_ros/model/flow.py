"""The normalizing flow of FlowCLAS (METHOD.md section 2).

One :class:`FlowStep` = ActNorm -> fixed channel permutation -> one-sided affine coupling, composed
of small invertible modules as FrEIA does; :class:`Flow` stacks them (state-dict keys read
``steps.3.coupling.subnet...``). Every module maps a
feature map x (B x C x h x w) to (y, logdet) where logdet (B x h x w) is the *per-pixel*
log|det J|: summing it over positions gives the exact total log-determinant of the module, because
each Jacobian is triangular in a (x1, then x2) channel ordering even though the coupling subnet
mixes neighbouring positions.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import FlowConfig


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale).

    Data-dependent initialisation (Glow): on the first forward in training mode the parameters are
    set so that this batch comes out with zero mean and unit variance per channel. Until then the
    layer is the identity. ``initialized`` is a buffer so that checkpoints carry it.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        b, _, h, w = x.shape
        logdet = self.log_scale.sum().expand(b, h, w)
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class Permutation(nn.Module):
    """A fixed random channel permutation (log-determinant 0), reproducible from its seed."""

    def __init__(self, channels: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(channels, generator=g)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        return x[:, self.perm], x.new_zeros(b, h, w)

    def inverse(self, y: Tensor) -> Tensor:
        return y[:, self.inv_perm]


class ResidualSubnet(nn.Module):
    """The authors' coupling subnet: a bias-free residual CNN, then a zero-initialised 1x1 conv.

    GN(1)-ReLU-Conv3x3(c->c)-GN-ReLU-Conv1x1(c->h)-GN-ReLU-Conv3x3(h->h) + skip(x), then
    Conv1x1(h -> out). The skip is the identity when h == c, else a 1x1 projection.
    Shapes: (B, c, h, w) -> (B, out, h, w).
    """

    def __init__(self, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(1, c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, padding=1, bias=False),
            nn.GroupNorm(1, c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.GroupNorm(1, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        )
        self.skip = nn.Identity() if hidden == c_in else nn.Conv2d(c_in, hidden, 1, bias=False)
        self.out = nn.Conv2d(hidden, c_out, 1, bias=False)
        nn.init.zeros_(self.out.weight)  # every coupling starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.skip(x))


class SimpleSubnet(nn.Module):
    """A lighter subnet: Conv3x3(c->h)-ReLU, then the zero-initialised Conv1x1(h->out)."""

    def __init__(self, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(hidden, c_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class ConvSubnet(nn.Module):
    """FastFlow's subnet: ConvK(c->h)-ReLU, then the zero-initialised ConvK(h->out)."""

    def __init__(self, c_in: int, c_out: int, hidden: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(nn.Conv2d(c_in, hidden, kernel, padding=pad), nn.ReLU())
        self.out = nn.Conv2d(hidden, c_out, kernel, padding=pad)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


SUBNETS = {"residual": ResidualSubnet, "simple": SimpleSubnet, "conv": ConvSubnet}


class AffineCoupling(nn.Module):
    """One-sided affine coupling: y1 = x1, y2 = x2 * exp(s) + t, [s_raw, t] = subnet(x1).

    s = clamp * tanh(s_raw) keeps each log-scale in (-clamp, clamp). x1 is the first C//2
    channels. The per-pixel log-determinant is sum_c s_c(p).
    """

    def __init__(self, channels: int, hidden: int, subnet: str = "residual", clamp: float = 2.0,
                 kernel: int = 3):
        super().__init__()
        if subnet not in SUBNETS:
            raise ValueError(f"unknown subnet {subnet!r}; choose one of {sorted(SUBNETS)}")
        self.split = channels // 2
        self.c2 = channels - self.split
        self.clamp = clamp
        extra = {"kernel": kernel} if subnet == "conv" else {}
        self.subnet = SUBNETS[subnet](self.split, 2 * self.c2, hidden, **extra)

    def _scale_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.subnet(x1).split(self.c2, dim=1)
        return self.clamp * torch.tanh(s_raw), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x.split((self.split, self.c2), dim=1)
        s, t = self._scale_shift(x1)
        y2 = x2 * torch.exp(s) + t
        return torch.cat((x1, y2), dim=1), s.sum(dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y.split((self.split, self.c2), dim=1)
        s, t = self._scale_shift(y1)
        return torch.cat((y1, (y2 - t) * torch.exp(-s)), dim=1)


class FlowStep(nn.Module):
    """One step of the flow: ``actnorm`` -> ``permute`` -> ``coupling``, (B, C, h, w) in and out.

    forward(x, logdet=None) returns (y, logdet (B, h, w)): the running per-pixel log-determinant
    plus this step's (taking the running sum in keeps the additions in the flat-stack order).
    """

    def __init__(self, channels: int, hidden: int, subnet: str, clamp: float, seed: int,
                 kernel: int = 3):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.permute = Permutation(channels, seed=seed)
        self.coupling = AffineCoupling(channels, hidden, subnet, clamp, kernel)

    def forward(self, x: Tensor, logdet: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ld = self.actnorm(x)
        logdet = ld if logdet is None else logdet + ld
        x, _ = self.permute(x)  # a permutation's log-determinant is 0
        y, ld = self.coupling(x)
        return y, logdet + ld

    def inverse(self, y: Tensor) -> Tensor:
        return self.actnorm.inverse(self.permute.inverse(self.coupling.inverse(y)))


class Flow(nn.Module):
    """A stack of ``steps`` :class:`FlowStep` on C channels.

    forward: x (B, C, h, w) -> z (B, C, h, w), logdet (B, h, w) with
    logdet.sum() == total log|det dz/dx| over the batch.
    """

    def __init__(self, channels: int, config: FlowConfig | None = None):
        super().__init__()
        cfg = config or FlowConfig()
        hidden = cfg.hidden or max(channels // 2, 1)
        kernels = list(cfg.kernels) or [3]
        self.steps = nn.ModuleList(
            FlowStep(channels, hidden, cfg.subnet, cfg.clamp, seed=cfg.seed * 1000 + i,
                     kernel=int(kernels[i % len(kernels)]))
            for i in range(cfg.steps))
        self.channels = channels
        self.config = cfg

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        logdet = x.new_zeros(b, h, w)
        for step in self.steps:
            x, logdet = step(x, logdet)
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent ActNorm initialisation from one batch, regardless of train/eval mode."""
        for step in self.steps:
            if not bool(step.actnorm.initialized):
                step.actnorm.initialize(x)
            x, _ = step(x)
