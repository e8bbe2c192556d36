"""The host pipeline's fast paths give the same numbers as simple reference arithmetic.

Tolerances (what the numpy pipeline guarantees against these references):

* model input: within 1e-6 on [0, 1] of PIL's double-precision float resize (the deployed resize
  before the banded matmuls) and of a float64 reference of the taps;
* heatmap: bit for bit the row-then-column taps under 2**19 pixels, within a float32 rounding
  (1e-6 relative) of them above (banded matmuls), and the same bits on a thread pool, into a
  message's buffer and on every call; mask: bit for bit ``heatmap >= threshold``;
* overlay: bit for bit PIL's RGB blend with the channels flipped after, and within one grey level
  of the integer blend of :mod:`flowclas_ros.runtime.visualisation`.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.bundle.preprocess import (
    _axis,
    _upsample_matmul,
    frame_to_input,
    resize_bilinear_np,
    upsample_score_np,
)
from flowclas_ros.runtime.numpy_pipeline import NumpyPipeline, message_array
from flowclas_ros.runtime.visualisation import blend_weight, colormap_lut

SIZES = [((1080, 1920), (360, 480)), ((480, 640), (360, 480)), ((37, 53), (48, 64)),
         ((361, 479), (360, 480)), ((100, 90), (100, 40)), ((31, 200), (64, 200))]


def _pil_input(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize as first deployed: PIL float planes, stacked, then scaled."""
    h, w = size
    planes = Image.fromarray(frame).split()
    x = np.stack([np.asarray(p.convert("F").resize((w, h), Image.BILINEAR)) for p in planes], -1)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]) * np.float32(1.0 / 255.0)


def _taps_input(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Apply the taps of ``_axis`` in float64, rows then columns, and scale to [0, 1]."""
    (iy, wy), (ix, wx) = _axis(frame.shape[0], size[0]), _axis(frame.shape[1], size[1])
    f = frame.astype(np.float64)
    rows = (f[iy] * wy[:, :, None, None]).sum(1)
    x = (rows[:, ix] * wx[None, :, :, None]).sum(2)
    return (x / 255.0).transpose(2, 0, 1)[None]


@pytest.mark.parametrize("src,dst", SIZES)
def test_frame_to_input_matches_the_references(src, dst):
    frame = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), np.uint8)
    got = frame_to_input(frame, dst)
    assert got.shape == (1, 3, *dst) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, _pil_input(frame, dst), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, _taps_input(frame, dst), rtol=0, atol=1e-6)
    # bit for bit: on a thread pool, from a non-contiguous view, and as the (h, w, 3) resize
    with ThreadPoolExecutor(3) as pool:
        assert np.array_equal(frame_to_input(frame, dst, pool.map), got)
    view = np.concatenate([frame, frame], axis=1)[:, ::2]
    assert np.array_equal(frame_to_input(view, dst),
                          frame_to_input(np.ascontiguousarray(view), dst))
    scaled = resize_bilinear_np(frame, dst).transpose(2, 0, 1)[None] * np.float32(1.0 / 255.0)
    assert np.array_equal(scaled, got)


def test_frame_to_input_same_size_only_scales():
    frame = np.random.default_rng(0).integers(0, 256, (36, 48, 3), np.uint8)
    x = frame_to_input(frame, (36, 48))
    want = frame.astype(np.float32) * np.float32(1.0 / 255.0)
    assert np.array_equal(x[0].transpose(1, 2, 0), want)


@pytest.mark.parametrize("size", [(1080, 1920), (480, 640), (131, 77), (37, 53), (36, 200),
                                  (90, 48)])
def test_upsample_is_the_taps(size):
    score = np.random.default_rng(0).normal(1.0, 0.4, (36, 48)).astype(np.float32)
    want = resize_bilinear_np(score[:, :, None], size)[:, :, 0]
    got = upsample_score_np(score, size)
    assert got.shape == size and got.dtype == np.float32
    if size[0] * size[1] < 1 << 19:
        assert np.array_equal(got, want)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(score).max())
    with ThreadPoolExecutor(2) as pool:  # the same bits whatever the threads
        assert np.array_equal(upsample_score_np(score, size, pool.map, 2), got)
    out = message_array(size, np.float32)
    assert upsample_score_np(score, size, out=out) is out and np.array_equal(out, got)


@pytest.mark.parametrize("size", [(36, 200), (90, 48), (37, 53), (131, 77), (20, 30), (18, 96)])
def test_matmul_upsampling_at_any_size(size):
    """The HD path, on sizes that keep one axis or shrink one: still the taps, any threads."""
    score = np.random.default_rng(1).normal(1.0, 0.4, (36, 48)).astype(np.float32)
    want = resize_bilinear_np(score[:, :, None], size)[:, :, 0]
    got = np.empty(size, np.float32)
    _upsample_matmul(score, got, map, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(score).max())
    again = np.empty(size, np.float32)
    with ThreadPoolExecutor(2) as pool:
        _upsample_matmul(score, again, pool.map, 2)
    assert np.array_equal(again, got)


def test_upsample_keeps_an_infinite_score_in_its_own_pixels():
    score = np.zeros((12, 16), np.float32)
    score[3, 4] = np.inf
    got = upsample_score_np(score, (36, 64))
    assert np.isinf(got).any() and not np.isnan(got).any()
    assert (got[:, 40:] == 0).all()  # far from the infinite pixel: untouched


def _integer_blend(score, frame, score_range, alpha, colormap):
    lo, hi = score_range
    idx = np.rint(np.clip((score - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.intp)
    a = blend_weight(alpha)
    lut = colormap_lut(colormap).astype(np.int32)
    mix = frame[:, :, ::-1].astype(np.int32) * (256 - a) + lut[idx] * a + 128
    return (mix >> 8).astype(np.uint8)


def _pil_rgb_overlay(score, frame, score_range, alpha, colormap):
    """Blend as first deployed: in RGB in PIL, flipped to BGR after."""
    lo, hi = score_range
    idx = np.rint(np.clip((score - lo).astype(np.float32) * np.float32(255.0 / (hi - lo)), 0,
                          255)).astype(np.uint8)
    pal = Image.fromarray(idx, "L")
    pal.putpalette(np.ascontiguousarray(colormap_lut(colormap)[:, ::-1]).tobytes())
    out = Image.blend(Image.fromarray(frame, "RGB"), pal.convert("RGB"),
                      blend_weight(alpha) / 256.0)
    return np.asarray(out)[:, :, ::-1]


@pytest.mark.parametrize("size", [(1080, 1920), (61, 83)])
def test_finish_matches_the_references(size):
    rng = np.random.default_rng(size[0])
    frame = rng.integers(0, 256, (*size, 3), np.uint8)
    score = rng.normal(2.0, 1.0, (36, 48)).astype(np.float32)
    pipe = NumpyPipeline((36, 48), (0.0, 4.0))
    try:
        heat, mask, ov = pipe.finish(score, frame, heatmap=True, mask=True, overlay=True,
                                     threshold=2.0, alpha=0.4, colormap="jet")
        want = upsample_score_np(score, size)
        np.testing.assert_allclose(want, resize_bilinear_np(score[:, :, None], size)[:, :, 0],
                                   rtol=1e-6, atol=1e-5)
        assert np.array_equal(heat, want)
        assert np.array_equal(mask, np.where(want >= 2.0, 255, 0).astype(np.uint8))
        assert ov.shape == (*size, 3) and ov.dtype == np.uint8 and ov.flags.c_contiguous
        assert np.array_equal(ov, _pil_rgb_overlay(want, frame, (0.0, 4.0), 0.4, "jet"))
        diff = np.abs(ov.astype(int) - _integer_blend(want, frame, (0.0, 4.0), 0.4, "jet"))
        assert diff.max() <= 1
        _, m2, _ = pipe.finish(score, frame, heatmap=False, mask=True, overlay=False,
                               threshold=2.0, alpha=0.4, colormap="jet")
        assert np.array_equal(m2, mask)
        bad = score.copy()
        bad[0, 0], bad[5, 5], bad[9, 9] = np.nan, np.inf, -np.inf
        heat, _, _ = pipe.finish(bad, frame, heatmap=True, mask=False, overlay=False,
                                 threshold=2.0, alpha=0.4, colormap="jet")
        assert np.isfinite(heat).all()
    finally:
        pipe.close()


def test_outputs_go_into_their_messages_without_a_copy():
    pytest.importorskip("sensor_msgs.msg")
    from flowclas_ros.node.image_conversion import bgr_to_msg, heatmap_to_msg, mask_to_msg

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (50, 70, 3), np.uint8)
    score = rng.normal(2.0, 1.0, (36, 48)).astype(np.float32)
    pipe = NumpyPipeline((36, 48), (0.0, 4.0))
    try:
        heat, mask, ov = pipe.finish(score, frame, heatmap=True, mask=True, overlay=True,
                                     threshold=2.0, alpha=0.5, colormap="turbo")
    finally:
        pipe.close()
    for arr, to_msg, dtype in ((heat, heatmap_to_msg, np.float32), (mask, mask_to_msg, np.uint8),
                               (ov, bgr_to_msg, np.uint8)):
        msg = to_msg(arr)
        data = np.frombuffer(msg.data, dtype).reshape(arr.shape)
        assert np.shares_memory(data, arr) and np.array_equal(data, arr)
        assert msg.step * msg.height == arr.nbytes
    plain = heat.copy()  # any other array: one copy, same bytes
    msg = heatmap_to_msg(plain[:, :40])
    data = np.frombuffer(msg.data, np.float32).reshape(50, 40)
    assert not np.shares_memory(data, plain) and np.array_equal(data, plain[:, :40])
