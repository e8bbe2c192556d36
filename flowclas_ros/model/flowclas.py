"""The FlowCLAS model: frozen backbone -> LayerNorm -> flow -> diagonal Gaussian (METHOD.md 1, 6).

Follow one batch through :meth:`FlowCLAS.forward`:

1. :meth:`features` normalises the [0, 1] RGB batch (B, 3, H, W), zero-pads it at the bottom and
   right to the backbone's multiple and runs the frozen backbone -> (B, C, h, w).
2. :meth:`latent` applies the learnable LayerNorm over channels and the flow -> z (B, C, h, w) and
   the per-pixel log-determinant (B, h, w).
3. :meth:`score_map` turns them into a per-position anomaly score (B, h, w).
4. :meth:`upsample` resizes it bilinearly to the padded input and crops the padding -> (B, H, W).

Scores (higher = more anomalous):
* ``latent`` (the authors'): -mean_c[-0.5 ((z_c - mu_c) / sigma_c)^2 - log sigma_c];
* ``nll``: the full per-pixel negative log-likelihood per dimension, log-determinant included.

A fused backbone (:mod:`.fused_backbone`) normalises the image per part: the model's ``mean`` /
``std`` are then the identity and :meth:`FlowCLAS.normalize_and_pad` returns the parts' stacked
inputs. With ``road_prior`` the backbone appends the road probability as one more channel to its
features (never to :meth:`FlowCLAS.features`, what training sees); :meth:`FlowCLAS.latent` takes
it off and folds ``weight * (road - 0.5)`` into the per-pixel log-determinant, the only term of
the ``nll`` score that is per position alone, so the deployed graph (backbone -> latent ->
score_map, :mod:`flowclas_ros.bundle.graph`) scores ``nll + weight * (road - 0.5)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import build_backbone
from .config import SCORES, ModelConfig
from .flow import Flow
from .losses import gaussian_nll_map


class FlowCLAS(nn.Module):
    """Backbone (frozen) + LayerNorm + flow + Gaussian + projection head.

    forward: images (B, 3, H, W) RGB in [0, 1] -> anomaly scores (B, H, W).
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        if cfg.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {cfg.score!r}")
        self.config = cfg
        self.backbone = build_backbone(cfg.backbone)
        fused = bool(getattr(self.backbone, "fused", False))
        if fused and (cfg.mean or cfg.std):
            raise ValueError("a fused backbone normalises per part: leave model.mean/std unset")
        c = self.backbone.channels
        self.norm = nn.LayerNorm(c)
        self.flow = Flow(c, cfg.flow)
        self.mu = nn.Parameter(torch.zeros(c))
        self.log_sigma = nn.Parameter(torch.zeros(c))
        self.proj = nn.Conv2d(c, cfg.proj_dim, 1)
        mean = cfg.mean or self.backbone.mean
        std = cfg.std or self.backbone.std
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if cfg.road_prior.enabled:
            if cfg.score != "nll":
                raise ValueError("model.road_prior needs score nll")
            from .road_prior import RoadPriorBackbone

            b = self.backbone  # how the first 3 channels of its input are normalised:
            first = ((b.part_mean.flatten()[:3].tolist(), b.part_std.flatten()[:3].tolist())
                     if fused else (mean, std))
            self.backbone = RoadPriorBackbone(self.backbone, cfg.road_prior, *first,
                                              load=cfg.backbone.pretrained)

    @property
    def channels(self) -> int:
        return self.backbone.channels

    @property
    def stride(self) -> int:
        return self.backbone.stride

    # 1. frozen features ---------------------------------------------------------------------
    def normalize_and_pad(self, images: Tensor) -> Tensor:
        """Normalise (B, 3, H, W) in [0, 1] and zero-pad it to the backbone's multiple.

        For a fused backbone: its parts' inputs, each normalised and padded, stacked:
        (B, 3 x parts, ...).
        """
        x = (images - self.mean) / self.std
        if getattr(self.backbone, "fused", False):
            return self.backbone.prepare(x)  # x is the image itself: mean 0, std 1
        m = self.backbone.pad_multiple
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % m, 0, (-h) % m))

    @property
    def feature_backbone(self) -> nn.Module:
        """The backbone less the road prior's channel (what training and the cache see)."""
        return getattr(self.backbone, "inner", self.backbone)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> frozen features (B, C, ceil(H/m)*m/stride, ...)."""
        return self.feature_backbone(self.normalize_and_pad(images))

    # 2. flow -------------------------------------------------------------------------------
    def latent(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Features (B, C, h, w) -> z (B, C, h, w), per-pixel log-determinant (B, h, w).

        With the road prior's channel appended (B, C + 1, h, w: the backbone's own output),
        ``weight * (road - 0.5)`` is folded into the log-determinant (module docstring).
        """
        c = self.channels
        road = feats[:, c] if feats.shape[1] == c + 1 else None
        x = self.norm(feats[:, :c].float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z, logdet = self.flow(x)
        if road is not None:
            logdet = logdet - (c * self.config.road_prior.weight) * (road.float() - 0.5)
        return z, logdet

    @torch.no_grad()
    def initialize(self, feats: Tensor) -> None:
        """Data-dependent ActNorm initialisation from a batch of features."""
        x = self.norm(feats.float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        self.flow.initialize(x)

    # 3. scores ------------------------------------------------------------------------------
    def nll_map(self, z: Tensor, logdet: Tensor) -> Tensor:
        """Per-pixel NLL per dimension, log-determinant included: (B, h, w)."""
        return gaussian_nll_map(z, logdet, self.mu, self.log_sigma)

    def latent_score_map(self, z: Tensor) -> Tensor:
        """Return the authors' score -log p~ = mean_c[0.5 u_c^2 + log sigma_c]: (B, h, w)."""
        u = (z - self.mu.view(1, -1, 1, 1)) * torch.exp(-self.log_sigma).view(1, -1, 1, 1)
        return (0.5 * u * u + self.log_sigma.view(1, -1, 1, 1)).mean(dim=1)

    def score_map(self, z: Tensor, logdet: Tensor) -> Tensor:
        if self.config.score == "nll":
            return self.nll_map(z, logdet)
        return self.latent_score_map(z)

    def embed(self, z: Tensor) -> Tensor:
        """Projection for the contrastive loss: (B, C, h, w) -> L2-normalised (B, P, h, w)."""
        return F.normalize(self.proj(z), dim=1)

    # 4. input resolution ----------------------------------------------------------------------
    def upsample(self, score: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, h, w) on the padded grid -> (B, H, W): bilinear to h*stride, then crop padding."""
        h, w = score.shape[-2:]
        s = self.stride
        up = F.interpolate(score[:, None], size=(h * s, w * s), mode="bilinear",
                           align_corners=False)
        return up[:, 0, : size[0], : size[1]]

    def forward(self, images: Tensor) -> Tensor:
        """Map (B, 3, H, W) RGB in [0, 1] to the anomaly score (B, H, W), float32.

        As the deployed graph computes it, the road prior included.
        """
        with torch.no_grad():
            feats = self.backbone(self.normalize_and_pad(images))
        z, logdet = self.latent(feats)
        return self.upsample(self.score_map(z, logdet), images.shape[-2:])

    # trainable part -----------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen backbone (which is rebuilt from its config)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, sd: dict[str, Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(sd), set(sd) - expected
        if missing or unexpected:
            raise ValueError(f"state dict does not fit this model: missing {sorted(missing)[:8]}, "
                             f"unexpected {sorted(unexpected)[:8]}")
        self.load_state_dict(sd, strict=False)
