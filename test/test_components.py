"""SMIYC component metrics on small hand-computed masks, and against a literal re-statement."""
import numpy as np
import pytest

from flowclas_ros.evaluation.components import (
    TAUS,
    TRACKS,
    ComponentConfig,
    ComponentMetrics,
    frame_components,
)

NO_FILTER = ComponentConfig(min_pred_size=1, min_gt_size=1)


def _mean_f1(siou, ppv):
    """F1 per tau from per-component values, written out independently of the module."""
    f1 = []
    for tau in np.linspace(0.25, 0.75, 11):
        tp = sum(s >= tau for s in siou)
        fn = len(siou) - tp
        fp = sum(p < tau for p in ppv)
        f1.append(2 * tp / (2 * tp + fn + fp))
    return float(np.mean(f1))


def test_taus_and_tracks():
    assert np.allclose(TAUS, [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75])
    assert (TRACKS["anomaly"].min_pred_size, TRACKS["anomaly"].min_gt_size) == (500, 100)
    assert (TRACKS["obstacle"].min_pred_size, TRACKS["obstacle"].min_gt_size) == (50, 10)


def test_one_object_overshooting_prediction():
    labels = np.zeros((6, 6), np.uint8)
    labels[1:3, 1:3] = 1  # 4 px
    pred = np.zeros((6, 6), bool)
    pred[1:3, 1:4] = True  # 6 px: the object + 2 background px
    fc = frame_components(pred, labels, NO_FILTER)
    assert fc.siou == pytest.approx([4 / 6]) and fc.ppv == pytest.approx([4 / 6])
    m = ComponentMetrics(0.5, NO_FILTER)
    m.update(pred.astype(np.float32), labels)
    out = m.compute()
    # tau 0.25..0.65 (9 values): TP 1, FP 0 -> F1 1; tau 0.70, 0.75: FN 1, FP 1 -> F1 0
    assert out["mean_f1"] == pytest.approx(9 / 11)
    assert out["siou"] == pytest.approx(2 / 3) and out["ppv"] == pytest.approx(2 / 3)
    assert out["f1_25"] == 1.0 and out["f1_50"] == 1.0 and out["f1_75"] == 0.0


def test_prediction_spanning_two_objects():
    """P1 covers all of A, 8 background px and 4 px of B; P2 lies on background only.

    columns: A 0-2, gap 3-6, B 7-9 (rows 0-1); P1 rows 0-1, cols 0-8 (18 px); P2 row 4 cols 0-3.
    sIoU(A) = |A ∩ P1| / (|A| + |P1 on background|) = 6 / (6 + 8); P1's pixels on B leave A's
    union.
    sIoU(B) = 4 / (6 + 8).  PPV(P1) = (6 + 4) / 18.  PPV(P2) = 0.
    tau 0.25: TP 2, FN 0, FP 1 -> 4/5; 0.30-0.40: TP 1, FN 1, FP 1 -> 1/2 (x3);
    0.45-0.55: TP 0 -> 0; 0.60-0.75: TP 0, FP 2 -> 0.  mean F1 = (0.8 + 1.5) / 11.
    """
    labels = np.zeros((5, 12), np.uint8)
    labels[0:2, 0:3] = 1
    labels[0:2, 7:10] = 1
    pred = np.zeros((5, 12), bool)
    pred[0:2, 0:9] = True
    pred[4, 0:4] = True
    fc = frame_components(pred, labels, NO_FILTER)
    assert sorted(fc.siou) == pytest.approx([4 / 14, 6 / 14])
    assert sorted(fc.ppv) == pytest.approx([0.0, 10 / 18])
    m = ComponentMetrics(0.5, NO_FILTER)
    m.update_mask(pred, labels)
    out = m.compute()
    assert out["mean_f1"] == pytest.approx(2.3 / 11)
    assert out["siou"] == pytest.approx(10 / 28) and out["ppv"] == pytest.approx(5 / 18)
    assert out["f1_25"] == pytest.approx(0.8) and out["f1_50"] == 0.0
    assert (out["n_gt_components"], out["n_pred_components"]) == (2, 2)


def _filter_case():
    """Return the prediction and labels of the size-filter case: S, G, Q and T.

    S: 3 px object; G: 9 px object; Q: 6 px prediction over S + 3 bg px; T: 4 px inside G;
    row 7 is void and fully predicted (never counts).
    """
    labels = np.zeros((8, 10), np.uint8)
    labels[0, 0:3] = 1  # S
    labels[4:7, 4:7] = 1  # G
    labels[7, :] = 255
    pred = np.zeros((8, 10), bool)
    pred[0, 0:6] = True  # Q
    pred[4:6, 4:6] = True  # T
    pred[7, :] = True
    return pred, labels


def test_size_filters():
    pred, labels = _filter_case()
    # no filters: sIoU(S) = 3 / (3 + 3), sIoU(G) = 4 / 9; PPV(Q) = 3 / 6, PPV(T) = 1
    fc = frame_components(pred, labels, NO_FILTER)
    assert sorted(fc.siou) == pytest.approx([4 / 9, 0.5])
    assert sorted(fc.ppv) == pytest.approx([0.5, 1.0])
    # predictions under 5 px dropped (T), objects under 4 px voided (S, and Q's pixels on it):
    # G is missed (sIoU 0); Q keeps only its 3 background px (PPV 0)
    fc = frame_components(pred, labels, ComponentConfig(min_pred_size=5, min_gt_size=4))
    assert fc.siou.tolist() == [0.0] and fc.ppv.tolist() == [0.0]
    # the bounds are "under": a 4 px prediction survives min_pred_size=4, a 3 px object
    # min_gt_size=3
    fc = frame_components(pred, labels, ComponentConfig(min_pred_size=4, min_gt_size=3))
    assert sorted(fc.siou) == pytest.approx([4 / 9, 0.5])


def test_anomaly_track_bounds_at_500_and_100_px():
    labels = np.zeros((100, 100), np.uint8)
    labels[40:50, 40:50] = 1  # 100 px: kept
    pred = np.zeros((100, 100), bool)
    pred[35:55, 35:60] = True  # 500 px containing the object
    fc = frame_components(pred, labels, "anomaly")
    assert fc.siou == pytest.approx([100 / 500]) and fc.ppv == pytest.approx([100 / 500])
    pred[35, 59] = False  # 499 px: dropped
    fc = frame_components(pred, labels, "anomaly")
    assert fc.siou.tolist() == [0.0] and fc.ppv.size == 0
    labels[49, 49] = 0  # 99 px object: void, and so the frame has no components
    fc = frame_components(pred, labels, "anomaly")
    assert fc.siou.size == 0 and fc.ppv.size == 0


def test_eight_connectivity():
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = labels[1, 1] = 1  # diagonal neighbours: one object
    pred = np.zeros((4, 4), bool)
    pred[1, 1] = pred[2, 2] = True  # one prediction, half on it
    fc = frame_components(pred, labels, NO_FILTER)
    assert fc.siou == pytest.approx([1 / 3]) and fc.ppv == pytest.approx([0.5])


def _literal(pred, labels, cfg):
    """Apply the definitions component by component with plain sets (slow, obvious)."""
    from scipy import ndimage

    s = np.ones((3, 3), bool)
    void = labels == 255
    pred = pred & ~void
    pc, n_p = ndimage.label(pred, s)
    for j in range(1, n_p + 1):
        if np.count_nonzero(pc == j) < cfg.min_pred_size:
            pc[pc == j] = 0
    gc, n_g = ndimage.label(labels == 1, s)
    for i in range(1, n_g + 1):
        if np.count_nonzero(gc == i) < cfg.min_gt_size:
            void = void | (gc == i)
    pix = lambda m: {tuple(x) for x in np.argwhere(m & ~void)}  # noqa: E731
    siou, ppv = [], []
    for i in range(1, n_g + 1):
        k = pix(gc == i)
        if not k:
            continue
        touching = {pc[y, x] for y, x in k} - {0}
        kp = set().union(*[pix(pc == j) for j in touching]) if touching else set()
        others = pix((gc > 0) & (gc != i))
        siou.append(len(k & kp) / len((k | kp) - others))
    gt = pix(gc > 0)
    for j in range(1, n_p + 1):
        kp = pix(pc == j)
        if kp:
            ppv.append(len(kp & gt) / len(kp))
    return sorted(siou), sorted(ppv)


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_definition_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((40, 50), np.uint8)
    pred = np.zeros((40, 50), bool)
    for _ in range(6):
        y, x, h, w = *rng.integers(0, [35, 45]), *rng.integers(1, 9, size=2)
        labels[y:y + h, x:x + w] = 1
    for _ in range(6):
        y, x, h, w = *rng.integers(0, [35, 45]), *rng.integers(1, 12, size=2)
        pred[y:y + h, x:x + w] = True
    labels[rng.random((40, 50)) < 0.03] = 255
    for cfg in (NO_FILTER, ComponentConfig(min_pred_size=10, min_gt_size=8)):
        fc = frame_components(pred, labels, cfg)
        siou, ppv = _literal(pred, labels, cfg)
        assert sorted(fc.siou) == pytest.approx(siou) and sorted(fc.ppv) == pytest.approx(ppv)


def test_counts_summed_over_frames():
    pred_a, labels_a = _filter_case()
    labels_b = np.zeros((6, 6), np.uint8)
    labels_b[1:3, 1:3] = 1
    pred_b = np.zeros((6, 6), bool)
    pred_b[1:3, 1:4] = True
    m = ComponentMetrics(0.5, NO_FILTER)
    m.update_mask(pred_a, labels_a)
    m.update_mask(pred_b, labels_b)
    siou, ppv = [0.5, 4 / 9, 4 / 6], [0.5, 1.0, 4 / 6]
    out = m.compute()
    assert out["mean_f1"] == pytest.approx(_mean_f1(siou, ppv))
    assert out["siou"] == pytest.approx(np.mean(siou))
    assert out["ppv"] == pytest.approx(np.mean(ppv))


def test_threshold_binarises_with_greater_equal_and_ignores_void_nan():
    labels = np.zeros((4, 4), np.uint8)
    labels[0:2, 0:2] = 1
    labels[3] = 255
    scores = np.zeros((4, 4), np.float32)
    scores[0:2, 0:2] = 0.7
    scores[3] = np.nan
    m = ComponentMetrics(0.7, NO_FILTER)
    fc = m.update(scores, labels)
    assert fc.siou.tolist() == [1.0] and fc.ppv.tolist() == [1.0]
    empty = ComponentMetrics(0.5, NO_FILTER).compute()
    assert np.isnan(empty["siou"]) and np.isnan(empty["mean_f1"])
