"""Pixel metrics: exact vs sklearn and direct computations, streaming error, thresholds."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from flowclas_ros.evaluation.metrics import ExactPixelMetrics, pixel_metrics, threshold_at_fpr
from flowclas_ros.evaluation.streaming_metrics import StreamingPixelMetrics


def _random_set(seed, n=20000, ties=False, void=0.1, pos=0.1):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos).astype(np.uint8)
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # ~20 distinct values, many ties across classes
    labels[rng.random(n) < void] = 255
    return scores.astype(np.float32), labels


def _fpr95_direct(scores, labels):
    """FPR at the first threshold, from high to low, whose TPR reaches 0.95."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    for t in np.unique(scores[labels != 255])[::-1]:
        if np.count_nonzero(pos >= t) / pos.size >= 0.95:
            return np.count_nonzero(neg >= t) / neg.size
    raise AssertionError("unreachable")


def _best_f1_direct(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    best = (-1.0, None)
    for t in np.unique(scores[labels != 255])[::-1]:
        tp, fp = np.count_nonzero(pos >= t), np.count_nonzero(neg >= t)
        f1 = 2 * tp / (tp + fp + pos.size)
        if f1 > best[0]:
            best = (f1, float(t))
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_sklearn_and_direct(seed, ties):
    scores, labels = _random_set(seed, ties=ties)
    valid = labels != 255
    m = pixel_metrics(scores, labels)
    assert set(m) == {"auprc", "fpr95", "auroc"}
    ap = average_precision_score(labels[valid], scores[valid])
    assert m["auprc"] == pytest.approx(ap, abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels[valid], scores[valid]), abs=1e-12)
    assert m["fpr95"] == pytest.approx(_fpr95_direct(scores, labels), abs=1e-15)


def test_exact_accumulates_frames_like_one_array():
    scores, labels = _random_set(3, n=30000, ties=True)
    acc = ExactPixelMetrics()
    for s, lab in zip(np.split(scores.reshape(30, 1000), 6),
                      np.split(labels.reshape(30, 1000), 6)):
        acc.update(s, lab)
    r = acc.result()
    assert acc.compute() == pixel_metrics(scores, labels)
    assert r.n_pos == np.count_nonzero(labels == 1) and r.n_neg == np.count_nonzero(labels == 0)
    f1, t = _best_f1_direct(scores, labels)
    assert r.best_f1 == pytest.approx(f1) and r.best_f1_threshold == t
    # a second compute after more frames sees them all
    acc.update(scores[:100] + 5, np.ones(100, np.uint8))
    s2 = np.concatenate([scores, scores[:100] + 5])
    l2 = np.concatenate([labels, np.ones(100, np.uint8)])
    assert acc.compute() == pytest.approx(pixel_metrics(s2, l2))


def test_edge_cases_separation_and_all_tied():
    labels = np.array([0, 0, 0, 1, 1, 255], np.uint8)
    m = pixel_metrics(np.array([0.1, 0.2, 0.3, 0.8, 0.9, np.nan]), labels)  # NaN on void is fine
    assert m == {"auprc": 1.0, "fpr95": 0.0, "auroc": 1.0}
    m = pixel_metrics(np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.0]), labels)
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0 and m["auprc"] == pytest.approx(
        average_precision_score([0, 0, 0, 1, 1], [0.9, 0.8, 0.7, 0.1, 0.2]))
    m = pixel_metrics(np.full(6, 0.5), labels)  # one threshold: everything flagged
    assert m == {"auprc": pytest.approx(2 / 5), "fpr95": 1.0, "auroc": 0.5}


def test_infinite_scores_are_extremes():
    scores, labels = _random_set(4, n=5000)
    scores[:50] = np.inf
    scores[50:100] = -np.inf
    finite = scores.copy()
    finite[:50], finite[50:100] = 1e6, -1e6  # same order, finite
    assert pixel_metrics(scores, labels) == pixel_metrics(finite, labels)
    st = StreamingPixelMetrics()
    st.update(scores, labels)
    exact = pixel_metrics(scores, labels)
    for k, v in st.compute().items():
        assert v == pytest.approx(exact[k], abs=1e-4)


def test_bad_inputs_raise():
    labels = np.array([0, 1, 1], np.uint8)
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.array([0.1, np.nan, 0.3]), labels)
    with pytest.raises(ValueError, match="0 \\(inlier\\), 1 \\(anomaly\\) or 255"):
        pixel_metrics(np.zeros(3), np.array([0, 2, 1], np.uint8))
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(np.zeros((2, 3)), np.zeros((3, 2), np.uint8))
    with pytest.warns(UserWarning, match="no anomaly"):
        m = pixel_metrics(np.zeros(3), np.zeros(3, np.uint8))
    assert all(math.isnan(v) for v in m.values())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.05, 0.3, 1.0])
def test_threshold_at_fpr_is_smallest_with_fpr_below(fpr, ties):
    scores, labels = _random_set(5, n=20000, ties=ties)
    t = threshold_at_fpr(scores, labels, fpr)
    neg = scores[labels == 0]
    assert np.count_nonzero(neg >= t) / neg.size <= fpr
    if fpr < 1.0:  # any lower float32 threshold flags too many inliers
        lower = np.nextafter(np.float32(t), np.float32(-np.inf))
        assert np.count_nonzero(neg >= lower) / neg.size > fpr
    else:
        assert t == scores[labels != 255].min()
    acc = ExactPixelMetrics()
    acc.update(scores, labels)
    assert acc.threshold_at_fpr(fpr) == t
    with pytest.raises(ValueError):
        threshold_at_fpr(scores, labels, 1.5)


def _frames(seed, n_frames=40, shape=(120, 160)):
    """Frames whose score distribution drifts, so the streaming range must grow."""
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        labels = np.zeros(shape, np.uint8)
        y, x = rng.integers(0, shape[0] - 30), rng.integers(0, shape[1] - 30)
        labels[y:y + 30, x:x + 30] = 1
        labels[:8] = 255
        scores = rng.gamma(2.0, 1.0 + 0.05 * i, size=shape) + 2.5 * labels
        yield scores.astype(np.float32), labels


def test_streaming_error_against_exact_is_small_and_memory_fixed():
    exact, fine = ExactPixelMetrics(), StreamingPixelMetrics()
    coarse = StreamingPixelMetrics(bins=2 ** 10)
    sizes = []
    for s, lab in _frames(0):
        for m in (exact, fine, coarse):
            m.update(s, lab)
        sizes.append(fine.nbytes)
    assert len(set(sizes)) == 1 and sizes[0] <= 17 * 2 ** 20  # fixed: 2 x 2^20 int64 + inf bins
    e, f, c = exact.compute(), fine.compute(), coarse.compute()
    err_fine = max(abs(f[k] - e[k]) for k in e)
    err_coarse = max(abs(c[k] - e[k]) for k in e)
    print(f"streaming max abs error: 2^20 bins {err_fine:.2e}, 2^10 bins {err_coarse:.2e}")
    assert err_fine < 1e-4
    assert err_coarse < 2e-2
    # AUROC: ties within a bin cost at most half the share of positive-negative pairs in it
    h = coarse._hist.astype(np.float64)
    bound = 0.5 * np.sum(h[:, 0] * h[:, 1]) / (h[:, 0].sum() * h[:, 1].sum())
    assert abs(c["auroc"] - e["auroc"]) <= bound + 1e-12


def test_streaming_is_exact_when_bins_resolve_every_value():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 100, size=50000).astype(np.float32)  # integer scores, many ties
    labels = (rng.random(50000) < 0.2 + 0.006 * scores).astype(np.uint8)
    labels[rng.random(50000) < 0.05] = 255
    st = StreamingPixelMetrics(bins=1024, range=(0.0, 128.0))  # bin width 1/8: one value per bin
    for part in range(5):
        sl = slice(part * 10000, (part + 1) * 10000)
        st.update(scores[sl], labels[sl])
    r, e = st.result(), ExactPixelMetrics()
    e.update(scores, labels)
    er = e.result()
    assert st.compute() == pytest.approx(er.metrics(), abs=1e-12)
    assert r.best_f1_threshold == er.best_f1_threshold and r.best_f1 == pytest.approx(er.best_f1)


def test_streaming_range_grows_by_doubling_without_error():
    rng = np.random.default_rng(2)
    st = StreamingPixelMetrics(bins=2 ** 12)
    st.update(np.array([0.0, 1.0], np.float32), np.array([0, 1], np.uint8))
    lo, hi = st.range
    scores = rng.integers(-40, 40, size=4000).astype(np.float32) / 4  # quarter grid, wide range
    labels = (rng.random(4000) < 0.3).astype(np.uint8)
    st.update(scores, labels)
    assert st.range[0] < -10 and st.range[1] > 10 and (st.range[1] - st.range[0]) / (hi - lo) >= 16
    all_s = np.concatenate([[0.0, 1.0], scores]).astype(np.float32)
    all_l = np.concatenate([[0, 1], labels]).astype(np.uint8)
    # range after doubling ~ 2^5 * 1.001 wide / 4096 bins << 0.25 grid: still exact
    assert st.compute() == pytest.approx(pixel_metrics(all_s, all_l), abs=1e-12)


def test_streaming_threshold_at_fpr_is_conservative_within_a_bin():
    scores, labels = _random_set(6, n=50000)
    st = StreamingPixelMetrics(bins=2 ** 12)
    st.update(scores, labels)
    width = (st.range[1] - st.range[0]) / st.bins
    neg = scores[labels == 0]
    for fpr in (0.01, 0.05, 0.2):
        t_exact, t_stream = threshold_at_fpr(scores, labels, fpr), st.threshold_at_fpr(fpr)
        assert np.count_nonzero(neg >= t_stream) / neg.size <= fpr
        assert t_exact <= t_stream + 1e-6 <= t_exact + width + 1e-5


def test_threshold_at_fpr():
    """Check the calibration threshold of export: the smallest t with inlier FPR <= fpr."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000).astype(np.float32)
    labels = (rng.random(2000) < 0.2).astype(np.uint8)
    labels[:50] = 255
    for fpr in (0.0, 0.01, 0.05, 0.5):
        t = threshold_at_fpr(scores, labels, fpr)
        inl = scores[labels == 0]
        assert (inl >= t).mean() <= fpr
        below = np.nextafter(np.float32(t), np.float32(-np.inf))
        assert (inl >= below).mean() > fpr  # the smallest such threshold
    assert threshold_at_fpr(scores, labels, 1.0) == scores[labels == 0].min()
