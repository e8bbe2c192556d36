"""flowclas_ros.outputs (issue 19).

Regions, exceedance, persistence, depth pairing and decoding, back-projection, point cloud
packing, ignore masks and anomaly snapshots. No ROS: messages are duck-typed namespaces;
snapshot files are read back with flowclas_ros.data.bags.
"""
from __future__ import annotations

import array
import ast
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from flowclas_ros.outputs import regions as regions_mod
from flowclas_ros.outputs.depth import (
    CameraInfoError,
    DepthFormatError,
    Intrinsics,
    back_project,
    decode_depth,
    depth_geometry,
    intrinsics_from_camera_info,
)
from flowclas_ros.outputs.ignore_mask import (
    IgnoreMask,
    IgnoreMaskError,
    load_ignore_mask,
    save_ignore_mask,
    static_mask,
)
from flowclas_ros.outputs.pairing import DepthPairer, stamp_ns
from flowclas_ros.outputs.persistence import Persistence, box_iou
from flowclas_ros.outputs.pointcloud import FLOAT32, pack_points, unpack_points
from flowclas_ros.outputs.regions import (
    Region,
    check_exceedance_table,
    exceedance,
    exceedance_table,
    find_regions,
)
from flowclas_ros.outputs.resize import nearest_indices, resize_nearest, same_aspect

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000_000  # ns


# --- the package's imports ---------------------------------------------------------------------
def test_outputs_imports_only_numpy_scipy_pil_rosbags_and_layer_zero():
    allowed_third = {"numpy", "scipy", "PIL", "rosbags"}
    allowed_own = {"labels", "options", "paths", "jsonio", "image_codec", "outputs"}
    bad = []
    for path in sorted((ROOT / "flowclas_ros" / "outputs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: .x (outputs) or ..x (the package root)
                    if node.level == 1:
                        continue
                    names = [f"flowclas_ros.{node.module or node.names[0].name}"]
                else:
                    names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                if top == "flowclas_ros":
                    if n.split(".")[1] not in allowed_own:
                        bad.append(f"{path.name}: {n}")
                elif top not in allowed_third and top not in sys.stdlib_module_names:
                    bad.append(f"{path.name}: {n}")
    assert not bad, bad


# --- regions -----------------------------------------------------------------------------------
def _synthetic_mask():
    m = np.zeros((60, 80), bool)
    m[5:15, 10:30] = True            # a 20x10 rectangle: 200 px
    m[40:50, 60:62] = True           # a thin bar: 20 px
    m[20, 5] = m[21, 6] = True       # two pixels touching diagonally: one 8-connected region
    m[30:33, 40:43] = True           # a 3x3 square...
    m[33:36, 43:46] = True           # ...touching another at a corner: one region, 18 px
    m[55, 75] = True                 # a speck
    return m


def test_regions_of_a_synthetic_mask_count_boxes_and_pixels_exactly():
    m = _synthetic_mask()
    score = np.zeros(m.shape, np.float32)
    score[7, 12] = 5.0
    out = find_regions(m, score, min_region_pixels=1)
    got = [(r.box, r.pixels) for r in out.regions]
    assert got == [((10, 5, 20, 10), 200), ((5, 20, 2, 2), 2), ((40, 30, 6, 6), 18),
                   ((60, 40, 2, 10), 20)]  # ordered by top row, then left column
    assert out.regions[0].peak == 5.0 and np.isnan(out.regions[0].score)  # no table
    # "larger than min_region_pixels": strictly more
    assert [r.pixels for r in find_regions(m, min_region_pixels=18).regions] == [200, 20]
    assert len(find_regions(m, min_region_pixels=0).regions) == 5  # the speck too


def test_region_box_conventions():
    m = np.zeros((20, 20), bool)
    m[7, 5] = True
    r = find_regions(m).regions[0]
    assert r.box == (5, 7, 1, 1)
    assert r.bbox2d() == (5.0, 7.0, 1.0, 1.0)  # pixel-centre convention, size in pixels
    m[7:10, 5:9] = True
    r = find_regions(m).regions[0]
    assert r.box == (5, 7, 4, 3) and r.bbox2d() == (6.5, 8.0, 4.0, 3.0)


def test_region_pixels_labels_and_ignore():
    m = _synthetic_mask()
    out = find_regions(m, min_region_pixels=1)
    for r in out.regions:
        want = np.flatnonzero(out.labels == r.label)
        assert np.array_equal(np.sort(out.pixel_indices([r.label])), want)
    assert np.array_equal(out.pixel_mask(), out.labels > 0)
    assert out.pixel_mask().sum() == sum(r.pixels for r in out.regions)
    ignore = np.zeros(m.shape, bool)
    ignore[:, :35] = True
    kept = find_regions(m, ignore=ignore, min_region_pixels=1).regions
    assert [r.box for r in kept] == [(40, 30, 6, 6), (60, 40, 2, 10)]
    with pytest.raises(ValueError):
        find_regions(m, ignore=ignore[:, :10])
    with pytest.raises(KeyError):
        out.pixel_indices([99])


def test_max_regions_keeps_the_highest_peaks():
    m = _synthetic_mask()
    score = np.zeros(m.shape, np.float32)
    score[m] = 1.0
    score[40:50, 60:62] = 3.0
    score[30, 40] = 2.0
    out = find_regions(m, score, min_region_pixels=1, max_regions=2)
    assert [r.peak for r in out.regions] == [3.0, 2.0]


def test_pooled_labelling_equals_full_resolution_labelling():
    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = rng.integers(40, 200, 2)
        m = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 12)):  # sparse blobs and near-touching pieces
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            m[y:y + rng.integers(1, 20), x:x + rng.integers(1, 20)] = True
        m &= rng.random((h, w)) < rng.uniform(0.5, 1.0)  # ragged, gaps of a pixel or two
        score = rng.random((h, w)).astype(np.float32)
        min_px = int(rng.integers(0, 8))
        if trial < 40:  # the strip path itself must run (not the full-image fallback)
            assert regions_mod._components_pooled(m, min_px, 64) is not None or m.sum() > h * w / 8
        a = find_regions(m, score, min_region_pixels=min_px)
        b = find_regions(m, score, min_region_pixels=min_px, pooled=False)
        key = lambda rs: [(r.box, r.pixels, r.peak) for r in rs]  # noqa: E731
        assert key(a.regions) == key(b.regions)
        assert np.array_equal(a.labels, b.labels)
        lab, _ = ndimage.label(m, np.ones((3, 3)))
        assert len(a.regions) == int((np.bincount(lab.ravel())[1:] > min_px).sum())


# --- exceedance --------------------------------------------------------------------------------
def test_exceedance_is_the_fraction_of_calibration_pixels_below():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal(400_000).astype(np.float32)
    table = exceedance_table(scores)
    assert table.shape[1] == 2 and table[0, 0] == 0 and table[-1, 0] == 1
    check_exceedance_table(table.tolist())  # survives JSON
    probe = np.quantile(scores, [0.01, 0.3, 0.5, 0.9, 0.99, 0.999, 0.9999])
    got = exceedance(table, probe)
    truth = np.array([(scores < v).mean() for v in probe])
    assert np.all(np.abs(got - truth) < 1e-3)
    assert abs(got[-1] - truth[-1]) < 5e-5  # the logarithmic tail resolves the top percent
    assert exceedance(table, [-1e9])[0] == 0.0 and exceedance(table, [1e9])[0] == 1.0
    assert exceedance(table, scores.min())[()] == 0.0  # nothing is below the minimum
    assert np.isnan(exceedance(table, [np.nan])[0])
    grid = exceedance(table, np.linspace(-5, 5, 1001))
    assert np.all(np.diff(grid) >= 0)


def test_exceedance_ties_never_inflate_and_bad_tables_are_refused():
    scores = np.concatenate([np.zeros(5000), np.linspace(1, 2, 5000)])
    table = exceedance_table([scores[:3000], scores[3000:]])  # a list of arrays
    assert exceedance(table, [0.0])[0] == 0.0  # half the pixels equal 0: none is below 0
    assert abs(exceedance(table, [1.5])[0] - 0.75) < 2e-3
    with pytest.raises(ValueError):
        exceedance_table(np.array([np.nan, np.inf]))
    for bad in ([[0, 1]], [[0, 1], [0.5, 0]], [[0.1, 0], [1, 1]], [[0, 0], [1, np.nan]],
                np.zeros((3, 3))):
        with pytest.raises(ValueError):
            check_exceedance_table(bad)


def test_region_score_is_the_exceedance_of_its_peak():
    table = exceedance_table(np.linspace(0, 1, 100_001))
    m = np.zeros((30, 30), bool)
    m[5:10, 5:10] = True
    score = np.zeros((30, 30), np.float32)
    score[7, 7] = 0.99
    r = find_regions(m, score, table=table).regions[0]
    assert abs(r.score - 0.99) < 1e-3


# --- persistence -------------------------------------------------------------------------------
def _region(x, y, w=10, h=10, label=1):
    return Region(label, x, y, w, h, w * h, 1.0, 0.9)


def test_two_of_three_ignores_a_one_frame_region_and_keeps_an_id():
    p = Persistence(2, 3)
    frames = [[_region(10, 10), _region(50, 50)],  # the second region: this frame only
              [_region(11, 10)],
              [_region(12, 11)],
              [_region(13, 11)]]
    out = [p.update(f) for f in frames]
    assert out[0] == []  # seen once: not yet
    assert [(d.id, d.new, d.seen) for d in out[1]] == [("1", True, 2)]
    assert [(d.id, d.new) for d in out[2]] == [("1", False)]
    assert [d.id for d in out[3]] == ["1"] and out[3][0].age == 3
    for _ in range(3):
        assert p.update([]) == []
    assert p.tracks == 0  # not seen for m frames: dropped
    assert p.update([_region(50, 50)]) == []  # a one-frame region never reported


def test_ids_are_stable_under_small_motion_and_unique():
    p = Persistence(1, 1)
    ids = set()
    for k in range(20):
        dets = p.update([_region(10 + 2 * k, 10, 20, 20), _region(200 - 3 * k, 100, 30, 30)])
        ids |= {d.id for d in dets}
        assert len(dets) == 2
    assert ids == {"1", "2"}
    p.reset()
    assert [d.id for d in p.update([_region(10, 10)])] == ["3"]  # never reused


def test_persistence_off_reports_every_region_immediately():
    p = Persistence(1, 1)
    regs = [_region(10 * k, 0, 5, 5) for k in range(5)]
    dets = p.update(regs)
    assert [d.region for d in dets] == regs and all(d.new for d in dets)
    assert [d.id for d in dets] == ["1", "2", "3", "4", "5"]


def test_a_confirmed_track_survives_a_missed_frame_and_is_deterministic():
    def run():
        p = Persistence(2, 3)
        seq = [[_region(0, 0)], [_region(1, 0)], [], [_region(2, 0)], [], [], [], [_region(3, 0)]]
        return [[(d.id, d.new) for d in p.update(f)] for f in seq]

    out = run()
    assert out == [[], [("1", True)], [], [("1", False)], [], [], [], []]
    assert run() == out


def test_matching_is_one_to_one_and_prefers_higher_iou():
    p = Persistence(1, 3)
    p.update([_region(0, 0, 10, 10), _region(100, 0, 10, 10)])
    dets = p.update([_region(100, 1, 10, 10), _region(1, 0, 10, 10), _region(4, 0, 10, 10)])
    assert [d.id for d in dets] == ["2", "1", "3"]
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10], [20, 20, 1, 1]]))
    assert np.allclose(iou, [[50 / 150, 0.0]])
    for bad in ((0, 1), (3, 2), (1, 100)):
        with pytest.raises(ValueError):
            Persistence(*bad)


# --- pairing -----------------------------------------------------------------------------------
def test_depth_pairing_takes_the_nearest_within_the_skew():
    pr = DepthPairer(max_skew_s=0.02, queue_size=4)
    for k, t in enumerate([0, 33, 66, 100]):
        pr.add(T0 + t * 1_000_000, f"d{k}")
    m = pr.match(T0 + 40_000_000)
    assert m.item == "d1" and m.skew_ns == -7_000_000
    assert pr.match(T0 + 150_000_000) is None  # 50 ms from the nearest: beyond the skew
    assert pr.match(T0 + 120_000_000).item == "d3"  # exactly 20 ms: inclusive
    assert pr.match(T0 + 83_000_000).item == "d2"  # 17 ms from 66 and from 100: the earlier
    pr.add(T0 + 133_000_000, "d4")  # evicts d0 (queue_size 4)
    assert pr.match(T0) is None  # d0 is gone; d1 is 33 ms away
    assert pr.counts["matched"] == 3 and pr.counts["unmatched"] == 2
    assert stamp_ns(NS(sec=2, nanosec=5)) == 2_000_000_005
    assert stamp_ns(NS(stamp=NS(sec=1, nanosec=0))) == 1_000_000_000


def test_depth_pairing_is_thread_safe():
    pr = DepthPairer(max_skew_s=1.0, queue_size=8)
    stop = threading.Event()

    def feed():
        k = 0
        while not stop.is_set():
            pr.add(T0 + k, k)
            k += 1

    th = threading.Thread(target=feed)
    th.start()
    try:
        for _ in range(2000):
            m = pr.match(T0 + 10**6)
            assert m is None or isinstance(m.item, int)
    finally:
        stop.set()
        th.join()
    assert len(pr) == 8


# --- depth decoding ----------------------------------------------------------------------------
def _depth16(mm: np.ndarray, big=False, pad=0, data_type=bytes):
    h, w = mm.shape
    rows = mm.astype(">u2" if big else "<u2").view(np.uint8).reshape(h, 2 * w)
    rows = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], axis=1)
    data = rows.tobytes()
    data = {bytes: data, bytearray: bytearray(data), np.ndarray: rows.reshape(-1),
            array.array: array.array("B", data)}[data_type]
    return NS(height=h, width=w, encoding="16UC1", is_bigendian=int(big), step=2 * w + pad,
              data=data)


def _depth32(m: np.ndarray, big=False, pad=0):
    h, w = m.shape
    rows = m.astype(">f4" if big else "<f4").view(np.uint8).reshape(h, 4 * w)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return NS(height=h, width=w, encoding="32FC1", is_bigendian=int(big), step=4 * w + pad,
              data=rows.tobytes())


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
@pytest.mark.parametrize("data_type", [bytes, bytearray, np.ndarray, array.array])
def test_decode_16uc1(big, pad, data_type):
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000 + 1
    d = decode_depth(_depth16(mm, big, pad, data_type))
    assert d.shape == (3, 4)
    assert np.allclose(d.metres(), mm / 1000.0)
    assert np.allclose(d.at(np.array([2]), np.array([3])), [11.001])


@pytest.mark.parametrize("big", [False, True])
def test_decode_32fc1_keeps_nan(big):
    m = np.array([[1.5, np.nan, 2.0], [np.inf, 0.0, 3.25]], np.float32)
    d = decode_depth(_depth32(m, big, pad=4))
    assert np.array_equal(d.metres(), m, equal_nan=True)


@pytest.mark.parametrize("change,match", [
    ({"encoding": "mono16"}, "REP 118"), ({"encoding": "rgb8"}, "not supported"),
    ({"width": 0}, "empty"), ({"height": -1}, "empty"), ({"step": 7}, "step 7"),
    ({"is_bigendian": 2}, "is_bigendian"), ({"data": b"\x00" * 23}, "23 bytes"),
    ({"height": 10**6}, "bytes"), ({"width": "x"}, "non-integer")])
def test_malformed_depth_is_refused_clearly(change, match):
    msg = _depth16(np.ones((3, 4), np.uint16))
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(DepthFormatError, match=match):
        decode_depth(msg)


def test_depth_missing_field_and_pixel_limit():
    msg = _depth16(np.ones((3, 4), np.uint16))
    del msg.step
    with pytest.raises(DepthFormatError, match="no field 'step'"):
        decode_depth(msg)
    with pytest.raises(DepthFormatError, match="more than 10"):
        decode_depth(_depth16(np.ones((3, 4), np.uint16)), max_pixels=10)


# --- CameraInfo --------------------------------------------------------------------------------
def _info(k=(500, 0, 319.5, 0, 500, 239.5, 0, 0, 1), w=640, h=480, **extra):
    return NS(k=list(k), width=w, height=h, **extra)


def test_camera_info_intrinsics():
    i = intrinsics_from_camera_info(_info())
    assert (i.fx, i.fy, i.cx, i.cy, i.width, i.height) == (500, 500, 319.5, 239.5, 640, 480)
    b = intrinsics_from_camera_info(_info(binning_x=2, binning_y=2))
    assert (b.fx, b.cx, b.width) == (250, 159.5, 320)
    assert intrinsics_from_camera_info(_info(roi=NS(x_offset=0, y_offset=0, width=0, height=0)))


@pytest.mark.parametrize("info,match", [
    (_info(k=[500, 0, 319.5, 0, 500, 239.5]), "9 entries"),
    (_info(k=[0, 0, 319.5, 0, 500, 239.5, 0, 0, 1]), "focal"),
    (_info(k=[500, 0, 319.5, 0, -1, 239.5, 0, 0, 1]), "focal"),
    (_info(k=[np.nan, 0, 319.5, 0, 500, 239.5, 0, 0, 1]), "non-finite"),
    (_info(k=[0] * 9), "not calibrated"),
    (_info(w=0), "width and height"),
    (_info(roi=NS(x_offset=10, y_offset=0, width=100, height=100)), "region of interest"),
    (NS(width=640, height=480), "lacks"),
])
def test_camera_info_refusals(info, match):
    with pytest.raises(CameraInfoError, match=match):
        intrinsics_from_camera_info(info)


# --- back-projection ---------------------------------------------------------------------------
def _plane_depth(intr: Intrinsics, normal, dist):
    """Depth (m) of the plane n . X = dist at every pixel of an image of ``intr``'s size."""
    v, u = np.mgrid[0:intr.height, 0:intr.width].astype(np.float64)
    ray = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)])
    return dist / np.tensordot(np.asarray(normal, float), ray, axes=1)


def test_back_projection_of_a_plane_at_a_known_depth():
    intr = intrinsics_from_camera_info(_info())
    depth = decode_depth(_depth16(np.full((480, 640), 2000, np.uint16)))
    geo = depth_geometry((480, 640), depth.shape, intr)
    pix = np.array([0, 639, 240 * 640 + 320, 479 * 640])  # corners and the centre
    pts = back_project(pix, (480, 640), depth, geo, max_points=100)
    want = np.array([[-319.5, -239.5], [319.5, -239.5], [0.5, 0.5], [-319.5, 239.5]]) * 2 / 500
    assert np.allclose(pts.xyz[:, :2], want, atol=0.01) and np.allclose(pts.xyz[:, 2], 2.0)
    # a tilted plane, quantised to millimetres: every point lies on it within 1 cm
    n = np.array([0.0, -0.6, 0.8])
    z = _plane_depth(intr, n, 1.6)
    depth = decode_depth(_depth16(np.round(z * 1000).astype(np.uint16)))
    mask = np.zeros((480, 640), bool)
    mask[100:400:3, 50:600:5] = True
    pts = back_project(mask, (480, 640), depth, geo, np.full((480, 640), 7.0, np.float32))
    assert len(pts) == mask.sum() and np.all(pts.score == 7.0)
    assert np.abs(pts.xyz.astype(np.float64) @ n - 1.6).max() < 0.01


def test_back_projection_skips_bad_depths_and_bounds_the_points():
    intr = Intrinsics(500, 500, 319.5, 239.5, 640, 480)
    m = np.full((480, 640), 3.0, np.float32)
    m[0, :10] = np.nan
    m[1, :10] = 0.0
    m[2, :10] = 50.0  # beyond max_depth
    m[3, :10] = np.inf
    m[4, :10] = 0.05  # below min_depth
    depth = decode_depth(_depth32(m))
    geo = depth_geometry((480, 640), (480, 640), intr)
    few = back_project(np.arange(50 * 640), (480, 640), depth, geo, max_points=-1)
    assert few.candidates == 50 * 640 and few.valid == 50 * 640 - 50 and len(few) == few.valid
    allpix = np.ones((480, 640), bool)
    a = back_project(allpix, (480, 640), depth, geo, max_points=20000)
    b = back_project(allpix, (480, 640), depth, geo, max_points=20000)
    assert len(a) == 20000 and np.array_equal(a.xyz, b.xyz)  # bounded, deterministic
    assert a.xyz[:, 1].min() < -1.4 and a.xyz[:, 1].max() > 1.4  # spread over the image
    assert np.all(np.isfinite(a.xyz)) and len(back_project(allpix, (480, 640), depth, geo,
                                                           max_points=0)) == 0


def test_depth_of_another_size_is_resized_and_its_intrinsics_scaled():
    cam = (480, 640)
    intr_half = Intrinsics(250, 250, 159.5, 119.5, 320, 240)  # the depth camera's own info
    n = np.array([0.3, 0.0, 1.0]) / np.linalg.norm([0.3, 0.0, 1.0])
    z = _plane_depth(intr_half, n, 2.0)
    depth = decode_depth(_depth32(z.astype(np.float32)))
    geo = depth_geometry(cam, depth.shape, intr_half)
    assert geo.intrinsics == Intrinsics(500, 500, 319.5, 239.5, 640, 480)
    assert np.array_equal(geo.rows[:4], [0, 0, 1, 1])
    pts = back_project(np.ones(cam, bool), cam, depth, geo, max_points=5000)
    assert np.abs(pts.xyz.astype(np.float64) @ n - 2.0).max() < 0.01
    # a CameraInfo of another resolution than its depth image, same aspect: scaled
    g2 = depth_geometry(cam, (240, 320), Intrinsics(1000, 1000, 639.5, 479.5, 1280, 960))
    assert g2.intrinsics == geo.intrinsics
    depth_geometry(cam, (241, 320), intr_half)  # within a pixel: accepted
    with pytest.raises(DepthFormatError, match="aspect"):
        depth_geometry(cam, (180, 320), intr_half)
    with pytest.raises(DepthFormatError, match="aspect"):
        depth_geometry(cam, (240, 320), Intrinsics(250, 250, 159.5, 89.5, 320, 180))


def test_resize_rule():
    assert list(nearest_indices(4, 8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(nearest_indices(8, 4)) == [1, 3, 5, 7]
    img = np.arange(12).reshape(3, 4)
    assert resize_nearest(img, 3, 4) is img
    assert resize_nearest(img, 6, 8)[::2, ::2].tolist() == img.tolist()
    assert same_aspect((480, 640), (240, 320)) and not same_aspect((480, 640), (360, 640))
    assert same_aspect((480, 640), (241, 320)) and not same_aspect((480, 640), (242, 320))
    i = Intrinsics(500, 400, 319.5, 239.5, 640, 480)
    assert i.scaled(1280, 960).scaled(640, 480) == i


def test_point_cloud_packing():
    xyz = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    c = pack_points(xyz, np.array([0.5, 0.9]))
    assert c.point_step == 16 and c.row_step == 32 and c.width == 2 and c.height == 1
    assert [(f.name, f.offset, f.datatype, f.count) for f in c.fields] == [
        ("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("score", 12, 7, 1)]
    assert isinstance(c.data, bytes) and len(c.data) == 32 and not c.is_bigendian
    assert np.allclose(unpack_points(c.data), [[1, 2, 3, 0.5], [4, 5, 6, 0.9]])
    assert pack_points(np.zeros((0, 3))).data == b""
    with pytest.raises(ValueError):
        pack_points(xyz, np.zeros(3))


# --- ignore mask -------------------------------------------------------------------------------
def test_ignore_mask_load_resize_and_errors(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[3, :, 2] = 1  # dark blue is non-zero too
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_ignore_mask(tmp_path / "rgb.png").sum() == 8
    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_ignore_mask(tmp_path / "rgba.png").sum() == 1
    m = np.zeros((4, 8), bool)
    m[2:, :3] = True
    save_ignore_mask(m, tmp_path / "m.png")
    im = IgnoreMask.from_file(tmp_path / "m.png")
    assert np.array_equal(im.mask, m) and im.fraction == 6 / 32
    big = im.for_size(8, 16)
    assert big.sum() == 24 and big[4:, :6].all() and not big.flags.writeable
    assert im.for_size(8, 16) is big  # cached per size
    assert im.for_size(2, 4).tolist() == [[False] * 4, [True, False, False, False]]
    with pytest.raises(IgnoreMaskError, match="aspect"):
        im.for_size(8, 8)
    with pytest.raises(IgnoreMaskError, match="does not exist"):
        load_ignore_mask(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(IgnoreMaskError, match="not a readable image"):
        load_ignore_mask(tmp_path / "bad.png")


def _static_band_frames(n=30, h=120, w=160, band=20, seed=0):
    """Make moving scenes above a constant bright band (a hood).

    The band's brightness drifts a little.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        scene = ndimage.gaussian_filter(rng.random((h, w)), 1.5)
        scene = 30 + 150 * (scene - scene.min()) / (np.ptp(scene) + 1e-9)
        img = np.repeat(scene[:, :, None], 3, axis=2)
        hood = (205 + 5 * np.sin(k) + np.linspace(0, 10, band)[:, None]
                + rng.normal(0, 1, (band, w)))
        img[h - band:] = hood[:, :, None]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def test_static_mask_finds_a_constant_bottom_band():
    res = static_mask(_static_band_frames())
    truth = np.zeros((120, 160), bool)
    truth[100:] = True
    inter, union = (res.mask & truth).sum(), (res.mask | truth).sum()
    assert inter / union > 0.9, (res.fraction, res.segments)
    assert not res.mask[:90].any()
    # a recording where nothing stays put: nothing masked
    rng = np.random.default_rng(3)
    moving = [ndimage.gaussian_filter(rng.random((60, 80, 3)) * 255, (2, 2, 0)).astype(np.uint8)
              for _ in range(20)]
    assert static_mask(moving).fraction < 0.02
    with pytest.raises(ValueError, match="at least 3"):
        static_mask(moving[:2])


def test_ignore_mask_tool_on_a_folder(tmp_path, capsys):
    from flowclas_ros.tools import ignore_mask as tool

    src = tmp_path / "frames"
    src.mkdir()
    for k, f in enumerate(_static_band_frames()):
        Image.fromarray(f).save(src / f"{k:03d}.png")
    out = tmp_path / "hood.png"
    assert tool.main(["--source", str(src), "--out", str(out), "--frames", "20",
                      "--preview", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "masked fraction 0.1" in text and (tmp_path / "p.png").is_file()
    mask = load_ignore_mask(out)
    assert mask.shape == (120, 160) and mask[105:].mean() > 0.95 and not mask[:90].any()
    assert tool.main(["--source", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_ignore_mask_tool_on_a_bag(tmp_path, capsys):
    from flowclas_ros.data.bags import write_bag
    from flowclas_ros.tools import ignore_mask as tool

    bag = tmp_path / "drive.mcap"
    write_bag(_static_band_frames(n=24), bag, "/cam", compressed=False)
    out = tmp_path / "hood.png"
    assert tool.main(["--bag", str(bag), "--topic", "/cam", "--out", str(out),
                      "--frames", "12"]) == 0
    assert "12 frames" in capsys.readouterr().out
    assert load_ignore_mask(out)[105:].mean() > 0.95


@pytest.mark.real_data
def test_static_mask_finds_the_hood_of_the_boston_car(shared_data):
    folder = shared_data / "hires-road" / "nuscenes-boston"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    from flowclas_ros.data.frame_sources import iter_frames, list_images

    files = list_images(folder)[::4]  # 50 of the 199 frames
    res = static_mask(f for p in files for f in iter_frames(p))
    rows = np.flatnonzero(res.mask.any(axis=1))
    assert 0.08 < res.fraction < 0.2, res.segments  # the hood: roughly the bottom tenth
    assert rows.min() > 0.75 * res.mask.shape[0] and res.mask[-1].mean() > 0.98


# --- snapshots ---------------------------------------------------------------------------------
from flowclas_ros.data.bags import BagSelection, bag_topics, iter_bag_frames  # noqa: E402
from flowclas_ros.image_codec import rgb_to_compressed  # noqa: E402
from flowclas_ros.outputs.snapshots import SnapshotRecorder  # noqa: E402

STEP = 100_000_000  # 10 Hz


def _raw(k, h=24, w=32):
    rgb = np.full((h, w, 3), k * 10 % 256, np.uint8)
    return NS(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w, data=rgb.tobytes())


def _det(k):
    return {"id": "7", "score": 0.995, "center_x": 5.5, "center_y": 3.0, "size_x": 4.0,
            "size_y": 2.0, "class_id": "anomaly", "frame": k}


def _feed(rec, frames, trigger_at=(), frame=_raw):
    for k in frames:
        rec.add(T0 + k * STEP, frame(k), np.full((24, 32), k, np.float32),
                [_det(k)] if k in trigger_at else [], "camera_optical")
        if k in trigger_at:
            rec.trigger(T0 + k * STEP, "test")


def _read(path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def test_snapshot_event_file_around_a_trigger_is_readable_by_the_bag_reader(tmp_path):
    rec = SnapshotRecorder(tmp_path, pre_s=0.5, post_s=0.5, max_mb=50)
    _feed(rec, range(40), trigger_at={10})
    rec.close()
    files = sorted(tmp_path.glob("anomaly_*.mcap"))
    assert [f.name for f in files] == ["anomaly_20231114T221321.000Z.mcap"]
    assert not list(tmp_path.glob(".partial_*"))
    assert bag_topics(files[0]) == {"/camera/image_raw/compressed":
                                    ("sensor_msgs/msg/CompressedImage", 11),
                                    "/anomaly/heatmap": ("sensor_msgs/msg/Image", 11)}
    frames = list(iter_bag_frames(files[0], BagSelection("/camera/image_raw/compressed")))
    assert [(f.timestamp - T0) // STEP for f in frames] == list(range(5, 16))  # 0.5 s each side
    assert [f.stamp for f in frames][0] == ((T0 + 5 * STEP) // 10**9, (T0 + 5 * STEP) % 10**9)
    assert all(f.frame_id == "camera_optical" and f.rgb.shape == (24, 32, 3) for f in frames)
    assert abs(int(frames[3].rgb.mean()) - 80) <= 2  # frame 8, JPEG'd
    msgs = _read(files[0])
    heat = [m for _, m in msgs["/anomaly/heatmap"]]
    assert [m.encoding for m in heat] == ["32FC1"] * 11
    assert [float(np.frombuffer(m.data.tobytes(), "<f4")[0]) for m in heat] == list(range(5, 16))
    dets = [m for _, m in msgs["/anomaly/detections"]]
    assert [len(m.detections) for m in dets] == [0] * 5 + [1] + [0] * 5
    d = dets[5].detections[0]
    assert (d.id, d.results[0].hypothesis.class_id, d.results[0].hypothesis.score) == (
        "7", "anomaly", 0.995)
    assert (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x) == (5.5, 3.0, 4.0)
    s = rec.stats()
    assert (s["events_started"], s["events_written"], s["items_written"]) == (1, 1, 11)
    assert s["bytes_written"] == files[0].stat().st_size and s["errors"] == 0


def test_overlapping_events_extend_one_file_and_separate_ones_make_two(tmp_path):
    rec = SnapshotRecorder(tmp_path, pre_s=0.5, post_s=0.5, max_mb=50, raw_as_jpeg=False)
    _feed(rec, range(60), trigger_at={10, 13, 19, 40})  # 19 - 0.5 s overlaps 13 + 0.5 s
    rec.close()
    files = sorted(tmp_path.glob("anomaly_*.mcap"))
    assert len(files) == 2
    first = _read(files[0])["/camera/image_raw"]  # raw frames as received
    assert [(t - T0) // STEP for t, _ in first] == list(range(5, 25))  # once each, in order
    assert first[0][1].encoding == "rgb8" and bytes(first[0][1].data) == _raw(5).data
    second = list(iter_bag_frames(files[1], BagSelection("/camera/image_raw")))
    assert [(f.timestamp - T0) // STEP for f in second] == list(range(35, 46))


def test_compressed_frames_are_kept_as_received(tmp_path):
    jpeg = rgb_to_compressed(np.full((24, 32, 3), 120, np.uint8), "jpeg")

    def frame(k):
        return NS(format="jpeg", data=jpeg)

    rec = SnapshotRecorder(tmp_path, pre_s=0.2, post_s=0.2, max_mb=50)
    _feed(rec, range(10), trigger_at={5}, frame=frame)
    rec.close()
    msgs = _read(next(tmp_path.glob("anomaly_*.mcap")))["/camera/image_raw/compressed"]
    assert len(msgs) == 5 and all(bytes(m.data) == jpeg and m.format == "jpeg" for _, m in msgs)


def test_snapshot_size_bound_deletes_the_oldest_events_only(tmp_path):
    old = tmp_path / "anomaly_20000101T000000.000Z.mcap"
    old.write_bytes(b"x" * 400_000)
    other = tmp_path / "notes.mcap"
    other.write_bytes(b"y" * 400_000)
    (tmp_path / ".partial_anomaly_stale").mkdir()  # an interrupted run's leftovers
    big = lambda k: _raw(k, 240, 320)  # noqa: E731  230 KB raw frames
    rec = SnapshotRecorder(tmp_path, pre_s=0.2, post_s=0.2, max_mb=1.0, raw_as_jpeg=False)
    assert not (tmp_path / ".partial_anomaly_stale").exists()
    for start in (0, 100, 200):
        for k in range(start, start + 10):
            rec.add(T0 + k * STEP, big(k), None, [], "cam")
            if k == start + 5:
                rec.trigger(T0 + k * STEP)
        rec.finish()
    rec.close()
    events = sorted(tmp_path.glob("anomaly_*.mcap"))
    total = sum(p.stat().st_size for p in events)
    assert total <= 1024 * 1024 and not old.exists() and other.exists()
    s = rec.stats()
    # each event (5 frames of 230 KB) fills the megabyte alone: the old file and the earlier
    # events go, and each event's last frame does not fit
    assert [p.name for p in events] == ["anomaly_20231114T221340.500Z.mcap"]  # the newest
    assert (s["events_written"], s["events_deleted"], s["items_written"], s["dropped_size"],
            s["errors"]) == (3, 3, 12, 3, 0)


def test_snapshot_writer_never_blocks_the_caller(tmp_path, monkeypatch):
    rec = SnapshotRecorder(tmp_path, pre_s=1.0, post_s=1.0, max_mb=50, max_queue=5)
    gate = threading.Event()
    original = rec._write_item

    def slow(w, item):  # a disk that hangs until the test lets it go
        gate.wait(5)
        original(w, item)

    monkeypatch.setattr(rec, "_write_item", slow)
    t0 = time.perf_counter()
    _feed(rec, range(30), trigger_at={10})
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0  # 30 frames with a hung disk: the caller never waited for it
    assert rec.stats()["dropped_queue"] > 0 and rec.stats()["pending"] <= 5
    gate.set()
    assert rec.flush(10)
    rec.close()
    assert len(list(tmp_path.glob("anomaly_*.mcap"))) == 1


def test_time_going_backwards_finishes_the_event(tmp_path):
    rec = SnapshotRecorder(tmp_path, pre_s=0.3, post_s=5.0, max_mb=50)
    _feed(rec, range(10), trigger_at={5})
    assert rec.stats()["open"]
    rec.add(T0, _raw(0), None, [])  # a replayed bag starts again
    assert rec.flush(10) and not rec.stats()["open"]
    rec.close()
    files = list(tmp_path.glob("anomaly_*.mcap"))
    assert len(files) == 1
    stamps = [(f.timestamp - T0) // STEP for f in iter_bag_frames(
        files[0], BagSelection("/camera/image_raw/compressed"))]
    assert stamps == [2, 3, 4, 5, 6, 7, 8, 9]


def test_the_ring_is_bounded_even_when_stamps_do_not_advance(tmp_path):
    rec = SnapshotRecorder(tmp_path, pre_s=1.0, post_s=1.0, max_mb=50, max_ring=50)
    for _ in range(500):
        rec.add(T0, None, None, [])
    assert len(rec._ring) == 50
    rec.close()


# --- fast paths: the same results as the straightforward ones ----------------------------------
def _region_key(out):
    return [(r.label, r.box, r.pixels, r.peak if r.peak == r.peak else "nan") for r in out.regions]


@pytest.mark.parametrize("kind", ["blobs", "noise", "edges", "uint8"])
def test_run_labelling_equals_pixel_labelling(kind):
    rng = np.random.default_rng({"blobs": 1, "noise": 2, "edges": 3, "uint8": 4}[kind])
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        if kind == "noise":  # very many runs: the fallback must give the same answer
            m = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        else:
            m = np.zeros((h, w), bool)
            for _ in range(rng.integers(0, 15)):
                y, x = rng.integers(0, h), rng.integers(0, w)
                m[y:y + rng.integers(1, 30), x:x + rng.integers(1, 30)] = True
            m &= rng.random((h, w)) < rng.uniform(0.6, 1.0)
        if kind == "edges":  # runs touching the first and last column and row
            m[:, 0] = m[:, -1] = m[0] = m[-1] = True
        mask = np.where(m, 255, 0).astype(np.uint8) if kind == "uint8" else m
        score = rng.random((h, w)).astype(np.float32)
        score[rng.random((h, w)) < 0.01] = np.nan  # a NaN peak stays NaN
        min_px, top = int(rng.integers(0, 6)), int(rng.integers(0, 4))
        ignore = rng.random((h, w)) < 0.1 if rng.random() < 0.5 else None
        runs = find_regions(mask, score, min_region_pixels=min_px, max_regions=top,
                            ignore=ignore)
        for method in ("pooled", "full"):
            other = find_regions(mask, score, min_region_pixels=min_px, max_regions=top,
                                 method=method, ignore=ignore)
            assert _region_key(runs) == _region_key(other)
            assert np.array_equal(runs.labels, other.labels)
            assert np.array_equal(runs.pixel_indices(), other.pixel_indices())
        if ignore is not None:
            assert not runs.pixel_mask()[ignore].any()
        for r in runs.regions:  # each region's pixels, in raster order
            assert np.array_equal(runs.pixel_indices([r.label]),
                                  np.flatnonzero(runs.labels == r.label))
    with pytest.raises(ValueError):
        find_regions(m, method="fast")


def test_pixel_indices_of_some_regions_in_the_order_asked():
    m = np.zeros((30, 40), bool)
    m[2:5, 3:9] = m[10:12, 20:30] = m[20:28, 1:3] = True
    out = find_regions(m)
    a, c = (np.flatnonzero(out.labels == k) for k in (1, 3))
    assert np.array_equal(out.pixel_indices([3, 1]), np.concatenate([c, a]))
    assert out.pixel_indices([]).size == 0
    assert not out.pixel_indices().flags.writeable  # shared: no caller may change it


def _reference_back_project(pixels, camera_hw, depth, geometry, score=None, *,
                            max_points=20000, min_depth=0.1, max_depth=20.0):
    """Back-project the straightforward way, which the fast one must reproduce bit for bit."""
    hc, wc = camera_hw
    px = np.asarray(pixels)
    px = (np.flatnonzero(px) if px.dtype == bool else px).astype(np.intp).ravel()
    v, u = np.divmod(px, wc)
    z = depth.at(geometry.rows[v], geometry.cols[u])
    with np.errstate(invalid="ignore"):
        ok = (z > 0) & (z >= min_depth) & (z <= max_depth)
    keep = np.flatnonzero(ok)
    if max_points >= 0 and keep.size > max_points:
        keep = keep[(np.arange(max_points, dtype=np.int64) * keep.size) // max(max_points, 1)]
    z = z[keep]
    v, u = np.divmod(px[keep], wc)
    intr = geometry.intrinsics
    xyz = np.empty((keep.size, 3), dtype=np.float32)
    xyz[:, 0] = (u.astype(np.float32) - np.float32(intr.cx)) * z / np.float32(intr.fx)
    xyz[:, 1] = (v.astype(np.float32) - np.float32(intr.cy)) * z / np.float32(intr.fy)
    xyz[:, 2] = z
    s = (np.asarray(score, dtype=np.float32).reshape(-1)[px[keep]] if score is not None
         else np.zeros(keep.size, dtype=np.float32))
    return xyz, s, int(px.size), int(np.count_nonzero(ok))


@pytest.mark.parametrize("encoding", ["16UC1", "16UC1-big", "32FC1", "32FC1-big", "16UC1-half"])
def test_fast_back_projection_equals_the_reference_bit_for_bit(encoding):
    rng = np.random.default_rng(5)
    cam = (48, 64)
    dh, dw = (24, 32) if encoding.endswith("half") else cam
    big = encoding.endswith("big")
    if encoding.startswith("16"):
        mm = rng.integers(0, 25000, (dh, dw)).astype(np.uint16)  # 0 and > 20 m included
        depth = decode_depth(_depth16(mm, big=big, pad=2 if big else 0))
    else:
        m = rng.uniform(-1.0, 25.0, (dh, dw)).astype(np.float32)
        m[rng.random((dh, dw)) < 0.05] = np.nan
        m[rng.random((dh, dw)) < 0.02] = np.inf
        depth = decode_depth(_depth32(m, big=big))
    intr = Intrinsics(60.0 * dw / 64, 61.0 * dh / 48, dw / 2 - 0.3, dh / 2 + 0.2, dw, dh)
    geo = depth_geometry(cam, depth.shape, intr)
    score = rng.random(cam).astype(np.float32)
    for max_points, lo, hi in ((-1, 0.1, 20.0), (500, 0.1, 20.0), (0, 0.1, 20.0),
                               (100000, 0.5, 3), (700, 0.001, 65.0)):
        for pixels in (rng.permutation(cam[0] * cam[1])[:1500], rng.random(cam) < 0.4):
            got = back_project(pixels, cam, depth, geo, score, max_points=max_points,
                               min_depth=lo, max_depth=hi)
            xyz, s, cand, valid = _reference_back_project(pixels, cam, depth, geo, score,
                                                          max_points=max_points, min_depth=lo,
                                                          max_depth=hi)
            assert (got.candidates, got.valid) == (cand, valid)
            assert np.array_equal(got.xyz, xyz) and np.array_equal(got.score, s)
            assert np.array_equal(got.packed, np.column_stack([xyz, s]))
    none = back_project(np.arange(10), cam, depth, geo)  # no score: 0
    assert np.all(none.score == 0) and none.packed.dtype == np.dtype("<f4")


def test_packed_points_become_point_cloud_data_in_one_copy():
    from flowclas_ros.outputs.pointcloud import packed_data

    packed = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = packed_data(packed)
    assert isinstance(data, array.array) and data.typecode == "B"
    assert bytes(data) == pack_points(packed[:, :3], packed[:, 3]).data
    assert np.array_equal(unpack_points(bytes(data)), packed)
    assert len(packed_data(np.zeros((0, 4), np.float32))) == 0
    with pytest.raises(ValueError):
        packed_data(np.zeros((3, 3), np.float32))


def test_persistence_small_matching_equals_the_numpy_matching(monkeypatch):
    from flowclas_ros.outputs import persistence as persistence_mod

    def run(small):
        monkeypatch.setattr(persistence_mod, "SMALL", small)
        rng = np.random.default_rng(6)
        p, out = Persistence(2, 3, 0.3), []
        for _ in range(80):
            boxes = rng.integers(1, 12, (rng.integers(0, 9), 4))
            regions = [Region(k + 1, int(x), int(y), int(w), int(h), 1, 1.0, 0.5)
                       for k, (x, y, w, h) in enumerate(boxes)]
            out.append([(d.id, d.region.box, d.new, d.seen, d.age) for d in p.update(regions)])
        return out

    numpy_only = run(0)
    assert sum(len(frame) for frame in numpy_only) > 20  # tracks were matched and confirmed
    assert numpy_only == run(10**6)  # plain Python for every frame
