"""The host pipeline around the score graph, for ONNX Runtime on the CPU (numpy, no torch).

Pre-processing: the deployed resize of :mod:`flowclas_ros.bundle.preprocess` (frame -> (1, 3,
h, w) float32 in [0, 1] at the bundle's input size). Post-processing: the (h, w) score ->
bilinear back to the frame's (H, W) -> ``nan_to_num`` (NaN and +inf become the largest float32,
i.e. "most anomalous", -inf the lowest) -> only the outputs asked for: the heatmap (the raw
score), and the mask and overlay of :mod:`.visualisation`.

An HD frame costs more host work than the model on a small CPU: the resize, and the score's
upsampling to an HD frame, are banded float32 matmuls (:mod:`flowclas_ros.bundle.preprocess`),
run with the overlay in bands on two threads (numpy and PIL release the GIL), and each output
is written once, straight into memory a ROS message takes without a copy
(:func:`message_array`; the node's ``image_conversion`` hands that buffer over). The heatmap and
mask are bit for bit what a single pass gives; the overlay is within one grey level of the
integer blend. Its twin on a device is :class:`.torch_pipeline.TorchPipeline` (same interface:
``prepare``, ``finish``).
"""
from __future__ import annotations

import array
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flowclas_ros.bundle.preprocess import (
    Resolution,
    check_image,
    frame_to_input,
    upsample_score_np,
)

from .visualisation import mask_np, overlay_np

FLOAT32_MAX = float(np.finfo(np.float32).max)


def message_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Return a zeroed C-contiguous array whose memory is an ``array.array("B")``.

    A sensor_msgs/Image takes that array.array as its ``data`` as it is (no copy): an output
    written here once is in its message (:mod:`flowclas_ros.node.image_conversion`).
    """
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(array.array("B", bytes(1)) * n, dtype).reshape(shape)


class NumpyPipeline:
    """Host pre/post-processing for a graph run by ONNX Runtime on the CPU."""

    def __init__(self, resolution: Resolution | tuple[int, int],
                 score_range: tuple[float, float]):
        """resolution: the bundle's (:attr:`Bundle.resolution`), or a fixed (h, w)."""
        self.resolution = Resolution.of(resolution)
        self.score_range = score_range
        # the three colour planes of a frame resize in parallel (PIL releases the GIL)
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="flowclas_resize")

    def prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 -> (model input (1, 3, h, w) float32 [0, 1], the frame as numpy)."""
        h, w = check_image(image)
        if not isinstance(image, np.ndarray):  # a torch tensor
            image = image.cpu().numpy()
        size = self.resolution.model_size(h, w)
        return frame_to_input(image, size, self._pool.map), image

    def finish(self, score: np.ndarray, frame: np.ndarray, *, heatmap: bool, mask: bool,
               overlay: bool, threshold: float, alpha: float, colormap: str):
        """Turn the score (h, w) float32 into (heatmap, mask, overlay) at the frame's size.

        Each output is None if not asked.
        """
        if not (heatmap or mask or overlay):
            return None, None, None
        H, W = frame.shape[:2]
        bands = 2 if H * W >= 1 << 19 else 1  # big frames: 2 cores
        # the heatmap straight into its message's memory; a map only for the mask/overlay
        s = message_array((H, W), np.float32) if heatmap else None
        s = upsample_score_np(score, (H, W), self._pool.map, bands, out=s)
        if not np.isfinite(score).all():  # checked on the model's grid: cheap; rare
            np.nan_to_num(s, copy=False, nan=FLOAT32_MAX, posinf=FLOAT32_MAX,
                          neginf=-FLOAT32_MAX)
        m = mask_np(s, threshold, out=message_array((H, W), np.uint8)) if mask else None
        ov = None
        if overlay:
            ov = message_array((H, W, 3), np.uint8)
            edges = np.linspace(0, H, bands + 1).astype(int)

            def part(rows: tuple[int, int]) -> None:
                y0, y1 = rows
                ov[y0:y1] = overlay_np(s[y0:y1], frame[y0:y1], self.score_range, alpha,
                                       colormap)

            list(self._pool.map(part, zip(edges[:-1], edges[1:])))
        return (s if heatmap else None), m, ov

    def close(self) -> None:
        self._pool.shutdown(wait=False)


__all__ = ["FLOAT32_MAX", "NumpyPipeline", "message_array"]
