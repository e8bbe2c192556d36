"""Losses: masked NLL, max_views sampling and the contrastive loss against a plain loop."""
import math

import torch
import torch.nn.functional as F

from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.model.losses import (
    downsample_labels,
    masked_nll,
    sample_views,
    supervised_contrastive,
)


def _loop_contrastive(anchors, anchor_labels, contrast, contrast_labels, tau):
    """METHOD.md section 3 written out literally, one anchor and one positive at a time."""
    losses = []
    for i in range(anchors.shape[0]):
        pos = [k for k in range(contrast.shape[0])
               if contrast_labels[k] == anchor_labels[i] and k != i]
        neg = [k for k in range(contrast.shape[0]) if contrast_labels[k] != anchor_labels[i]]
        if not pos:
            continue
        total = 0.0
        for p in pos:
            e_p = math.exp(float(anchors[i] @ contrast[p]) / tau)
            e_n = sum(math.exp(float(anchors[i] @ contrast[n]) / tau) for n in neg)
            total += math.log(e_p / (e_p + e_n))
        losses.append(-total / len(pos))
    return sum(losses) / len(losses)


def test_contrastive_equals_loop():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    extra = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    la = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    le = torch.tensor([1, 0, 1, 0, 0, 1])
    contrast, lc = torch.cat([a, extra]), torch.cat([la, le])
    for tau in (0.13, 0.5):
        got = supervised_contrastive(a, la, contrast, lc, temperature=tau)
        assert abs(float(got) - _loop_contrastive(a, la, contrast, lc, tau)) < 1e-10


def test_contrastive_anchor_without_positive_is_skipped():
    a = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    la = torch.tensor([1, 0, 0])  # the single outlier anchor has no positive
    got = supervised_contrastive(a, la, a, la, temperature=0.2)
    assert abs(float(got) - _loop_contrastive(a, la, a, la, 0.2)) < 1e-10


def test_contrastive_falls_when_classes_separate():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 8 + [1] * 8)
    direction = torch.randn(16, 2, generator=g)
    losses = []
    for sep in (0.0, 1.0, 3.0, 10.0):
        emb = direction.clone()
        emb[:, 0] += sep * (2 * labels - 1)
        emb = F.normalize(emb, dim=1)
        losses.append(float(supervised_contrastive(emb, labels, emb, labels, 0.13)))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_sample_views_balances_and_respects_max_views():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(2, 4, 6, 6, generator=g), dim=1)
    labels = torch.full((2, 6, 6), INLIER)
    labels[0, :2, :3] = ANOMALY  # 6 outlier pixels
    labels[1, 5] = VOID
    aux_labels = torch.full((2, 6, 6), INLIER)
    aux_labels[:, :1] = ANOMALY
    anchors, la, contrast, lc = sample_views(emb, labels, emb * 1, aux_labels, max_views=4,
                                             generator=g)
    assert (la == ANOMALY).sum() == 4 and (la == INLIER).sum() == 4
    assert torch.equal(contrast[:8], anchors) and torch.equal(lc[:8], la)
    assert (lc[8:] == ANOMALY).sum() == 4 and (lc[8:] == INLIER).sum() == 4
    assert VOID not in lc.tolist()
    # every anchor is a real pixel of its class
    flat = emb.permute(0, 2, 3, 1).reshape(-1, 4)
    flat_labels = labels.reshape(-1)
    for row, lab in zip(anchors, la):
        match = (flat == row).all(dim=1)
        assert match.any() and flat_labels[match][0] == lab


def test_sample_views_without_outliers_gives_no_anchor():
    emb = torch.randn(1, 4, 3, 3)
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    anchors, *_ = sample_views(emb, labels, None, None, max_views=8)
    assert anchors.shape[0] == 0
    assert float(supervised_contrastive(anchors, torch.zeros(0, dtype=torch.long), anchors,
                                        torch.zeros(0, dtype=torch.long))) == 0.0


def test_masked_nll_and_label_downsampling():
    nll = torch.arange(12.0).view(1, 3, 4)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    assert float(masked_nll(nll, mask)) == 0.5
    assert float(masked_nll(nll, torch.zeros_like(mask))) == 0.0
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 0, 0], [255, 255, 0, 0]]])
    assert downsample_labels(labels, (2, 2)).tolist() == [[[0, 1], [255, 0]]]
