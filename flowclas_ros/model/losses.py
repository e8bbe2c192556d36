"""Training losses of FlowCLAS (METHOD.md section 3).

* :func:`gaussian_nll_map` - the exact per-pixel negative log-likelihood of a flow latent.
* :func:`masked_nll` - its mean over inlier pixels, divided by C (per dimension), so that the
  weight alpha is of order 1 instead of the authors' 1e-6 on a sum.
* :func:`supervised_contrastive` - the outlier-vs-inlier contrastive loss on projected latents.
* :func:`sample_views` - max_views sampling of anchors and contrast embeddings.
* :class:`FlowCLASLoss` - the training objective (alpha * NLL [+ contrastive]) as one module.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..labels import ANOMALY, INLIER


def gaussian_log_prob_map(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """Log N(z_p; mu, diag sigma^2) summed over channels: (B, C, h, w) -> (B, h, w)."""
    c = z.shape[1]
    mu = mu.view(1, c, 1, 1)
    log_sigma = log_sigma.view(1, c, 1, 1)
    u = (z - mu) * torch.exp(-log_sigma)
    return -0.5 * c * math.log(2 * math.pi) - log_sigma.sum() - 0.5 * (u * u).sum(dim=1)


def gaussian_nll_map(z: Tensor, logdet: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """Per-pixel negative log-likelihood per dimension of the flow input.

    -(log N(z_p) + logdet_p) / C for each position: (B, C, h, w), (B, h, w) -> (B, h, w).
    """
    return -(gaussian_log_prob_map(z, mu, log_sigma) + logdet) / z.shape[1]


def masked_nll(nll_map: Tensor, inlier: Tensor) -> Tensor:
    """Mean of ``nll_map`` (B, h, w) over pixels where the boolean ``inlier`` (B, h, w) is True."""
    n = inlier.sum()
    if n == 0:
        return nll_map.sum() * 0.0  # keeps the graph connected for DDP
    return (nll_map * inlier).sum() / n


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour downsampling of an integer label map (B, H, W) -> (B, h, w)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _take(emb: Tensor, labels: Tensor, cls: int, n: int, generator: torch.Generator | None):
    """N random rows of ``emb`` (N, D) whose label is ``cls``."""
    idx = torch.nonzero(labels == cls, as_tuple=False)[:, 0]
    if idx.numel() > n:
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu").to(idx.device)
        idx = idx[perm[:n]]
    return emb[idx], torch.full((idx.numel(),), cls, dtype=torch.long, device=emb.device)


def sample_views(
    emb_mixed: Tensor,
    labels_mixed: Tensor,
    emb_aux: Tensor | None,
    labels_aux: Tensor | None,
    max_views: int = 512,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pick anchors and the contrast set, pooled over the batch.

    emb_*: (B, D, h, w) embeddings, labels_*: (B, h, w) in {INLIER, ANOMALY, VOID}.
    N = min(max_views, number of outlier pixels, number of inlier pixels) of each class are drawn
    from the mixed images as anchors (so both classes are balanced); the contrast set is the
    anchors plus up to N of each class from the auxiliary images.
    Returns (anchors (A, D), anchor_labels (A,), contrast (K, D), contrast_labels (K,)).
    """

    def flat(e: Tensor, lab: Tensor) -> tuple[Tensor, Tensor]:
        return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]), lab.reshape(-1)

    em, lm = flat(emb_mixed, labels_mixed)
    n = min(max_views, int((lm == ANOMALY).sum()), int((lm == INLIER).sum()))
    parts = [_take(em, lm, ANOMALY, n, generator), _take(em, lm, INLIER, n, generator)]
    anchors = torch.cat([p[0] for p in parts])
    anchor_labels = torch.cat([p[1] for p in parts])
    contrast, contrast_labels = [anchors], [anchor_labels]
    if emb_aux is not None and labels_aux is not None and n > 0:
        ea, la = flat(emb_aux, labels_aux)
        for cls in (ANOMALY, INLIER):
            e, lab = _take(ea, la, cls, n, generator)
            contrast.append(e)
            contrast_labels.append(lab)
    return anchors, anchor_labels, torch.cat(contrast), torch.cat(contrast_labels)


def supervised_contrastive(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    temperature: float = 0.13,
) -> Tensor:
    """Compute the FlowCLAS contrastive loss over L2-normalised embeddings.

    The first A rows of ``contrast`` must be the anchors themselves (as :func:`sample_views`
    returns them), so that an anchor is never its own positive. For anchor i with positives P(i)
    (same label, not i) and negatives N(i):
        L_i = -1/|P(i)| sum_p log( e^{s_ip/t} / (e^{s_ip/t} + sum_n e^{s_in/t}) )
    with s the cosine similarity. Anchors with no positive are skipped. Returns the mean over
    anchors (0 when there is none).
    """
    a = anchors.shape[0]
    if a == 0:
        return contrast.sum() * 0.0
    logits = anchors @ contrast.T / temperature  # (A, K)
    same = anchor_labels[:, None] == contrast_labels[None, :]
    not_self = torch.ones_like(same)
    not_self[torch.arange(a), torch.arange(a)] = False
    positive = same & not_self
    negative = ~same
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)
    # log(e^x / (e^x + e^n)) = x - logaddexp(x, n); with no negatives it is 0.
    log_ratio = logits - torch.logaddexp(logits, neg_lse)
    n_pos = positive.sum(dim=1)
    per_anchor = -(log_ratio * positive).sum(dim=1) / n_pos.clamp_min(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return contrast.sum() * 0.0
    return per_anchor[valid].mean()


# nll: the likelihood of the inliers only; flowclas: alpha * nll + the contrastive loss
OBJECTIVES = ("nll", "flowclas")


class FlowCLASLoss(nn.Module):
    """The FlowCLAS objective around a model, as one module (what DDP needs to wrap).

    forward(feats (B, C, h, w), labels (B, h, w) uint8 [, aux_feats, aux_labels, generator])
    -> (loss, nll, con) scalars, nll and con detached. ``objective="nll"``: loss = NLL over the
    inlier positions of ``feats``; ``"flowclas"``: alpha * NLL + the contrastive loss on the
    projected latents of the mixed and auxiliary images (METHOD.md section 3);
    ``aux_contrast=False`` contrasts the mixed images' cells among themselves only.
    """

    def __init__(self, model: nn.Module, objective: str, alpha: float = 1.0,
                 temperature: float = 0.13, max_views: int = 512, aux_contrast: bool = True):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.model = model
        self.objective, self.alpha = objective, alpha
        self.temperature, self.max_views = temperature, max_views
        self.aux_contrast = aux_contrast

    def forward(self, feats: Tensor, labels: Tensor, aux_feats: Tensor | None = None,
                aux_labels: Tensor | None = None, generator: torch.Generator | None = None):
        model = self.model
        b = feats.shape[0]
        contrastive = self.objective == "flowclas"
        x = torch.cat([feats, aux_feats]) if contrastive else feats
        z_all, logdet_all = model.latent(x)  # mixed and aux in one pass: norms are per sample
        z, logdet = z_all[:b].float(), logdet_all[:b].float()
        nll = masked_nll(model.nll_map(z, logdet), labels == INLIER)
        if not contrastive:
            zero = nll.detach() * 0.0
            return nll, nll.detach(), zero
        emb = model.embed(z_all).float()
        aux_emb, aux_lab = (emb[b:], aux_labels.long()) if self.aux_contrast else (None, None)
        views = sample_views(emb[:b], labels.long(), aux_emb, aux_lab, self.max_views, generator)
        con = supervised_contrastive(*views, temperature=self.temperature)
        return self.alpha * nll + con, nll.detach(), con.detach()
