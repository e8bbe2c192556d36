"""The host pipeline's fast paths give the same numbers as the reference arithmetic."""
import numpy as np
import pytest
from PIL import Image

from flowclas_ros.bundle.preprocess import frame_to_input, resize_bilinear_np


def _reference_input(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize as first deployed: PIL float planes, stacked, then scaled."""
    h, w = size
    planes = Image.fromarray(frame).split()
    x = np.stack([np.asarray(p.convert("F").resize((w, h), Image.BILINEAR)) for p in planes], -1)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]) * np.float32(1.0 / 255.0)


@pytest.mark.parametrize("src,dst", [((1080, 1920), (360, 480)), ((480, 640), (360, 480)),
                                     ((37, 53), (48, 64)), ((361, 479), (360, 480))])
def test_frame_to_input_is_bit_exact(src, dst):
    frame = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), np.uint8)
    want = _reference_input(frame, dst)
    got = frame_to_input(frame, dst)
    assert got.shape == (1, 3, *dst) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)
    # the same on a thread pool, and from a non-contiguous view of a frame
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        assert np.array_equal(frame_to_input(frame, dst, pool.map), want)
    view = np.concatenate([frame, frame], axis=1)[:, ::2]
    assert np.array_equal(frame_to_input(view, dst), _reference_input(np.ascontiguousarray(view),
                                                                     dst))
    scaled = resize_bilinear_np(frame, dst).transpose(2, 0, 1)[None] * np.float32(1.0 / 255.0)
    assert np.array_equal(scaled, want)


def test_frame_to_input_same_size_only_scales():
    frame = np.random.default_rng(0).integers(0, 256, (36, 48, 3), np.uint8)
    x = frame_to_input(frame, (36, 48))
    want = frame.astype(np.float32) * np.float32(1.0 / 255.0)
    assert np.array_equal(x[0].transpose(1, 2, 0), want)


@pytest.mark.parametrize("size", [(1080, 1920), (480, 640), (131, 77), (37, 53)])
def test_upsample_is_the_taps_bit_for_bit(size):
    from concurrent.futures import ThreadPoolExecutor

    from flowclas_ros.bundle.preprocess import upsample_score_np

    score = np.random.default_rng(0).normal(1.0, 0.4, (36, 48)).astype(np.float32)
    want = resize_bilinear_np(score[:, :, None], size)[:, :, 0]
    assert np.array_equal(upsample_score_np(score, size), want)
    with ThreadPoolExecutor(2) as pool:
        assert np.array_equal(upsample_score_np(score, size, pool.map, 2), want)
