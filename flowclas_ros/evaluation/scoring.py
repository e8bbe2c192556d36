"""Score sources: anything that turns a dataset Sample into an (H, W) anomaly map.

A :data:`Scorer` is a callable Sample -> (H, W) float map at the sample's resolution:

* :class:`ScoreFolder`: saved maps named after the images, ``DIR/<sample name>.npy`` (float) or
  ``.png`` (16-bit, read as value / 65535; 8-bit is accepted with a warning since its 256
  levels tie most pixels), so any method's outputs are compared on equal terms;
* :func:`model_scorer`: a torch FlowCLAS model, at native resolution or as a bundle of a given
  input size runs it (the deployed resize, :mod:`flowclas_ros.bundle.preprocess_torch`);
* :func:`backend_scorer`: a runtime Backend (a bundle as the node runs it);
* :func:`load_scorer`: ``--model PATH``, a checkpoint file or a bundle folder.

The ignore mask (the robot's hood or body, :mod:`flowclas_ros.outputs.ignore_mask`) applies to
labels, not scores: :func:`void_ignored` turns ignored pixels VOID, :class:`IgnoringDataset`
does it to every sample of a dataset, so calibration and evaluation leave them out as the node
leaves them out of its mask.
"""
from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

Scorer = Callable[[Any], np.ndarray]  # Sample -> (H, W) float score map


class EvaluationError(ValueError):
    """A problem with the inputs of an evaluation; the message says which file and what to do."""


def read_score_map(path: str | Path) -> np.ndarray:
    """Load a saved anomaly map -> (H, W) float32.

    .npy (any real dtype) or 16-bit / 8-bit PNG.
    """
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise EvaluationError(f"{path}: dtype {arr.dtype} is not a real-valued score map")
        arr = arr.astype(np.float32, copy=False)
    elif path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) <= 65535):
            arr = arr.astype(np.float32) / 65535.0
        elif mode == "L":
            warnings.warn(f"{path} is an 8-bit PNG: only 256 score levels, most pixels tie; save "
                          f"16-bit PNG or .npy for a faithful evaluation", stacklevel=2)
            arr = arr.astype(np.float32) / 255.0
        else:
            raise EvaluationError(f"{path}: PNG mode {mode} is not a single-channel score map; "
                                  f"save the raw score as 16-bit grey PNG or .npy, not colours")
    else:
        raise EvaluationError(f"{path}: score maps must be .npy or .png")
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise EvaluationError(f"{path}: score map has shape {arr.shape}, expected (H, W)")
    return arr


class ScoreFolder:
    """Scorer reading DIR/<sample.name>.npy (preferred) or DIR/<sample.name>.png."""

    SUFFIXES = (".npy", ".png")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"score folder {self.root} does not exist")

    def path(self, name: str) -> Path:
        for suffix in self.SUFFIXES:
            p = self.root / f"{name}{suffix}"
            if p.is_file():
                return p
        raise FileNotFoundError(
            f"no score map for image {name!r}: expected {self.root / name}.npy or .png "
            f"(maps are named after the dataset's sample names)")

    def __call__(self, sample) -> np.ndarray:
        return read_score_map(self.path(sample.name))


def module_device(model) -> str:
    """Return the device of a module's first parameter or buffer (cpu when it has none)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return str(t.device)
    return "cpu"


def model_scorer(model, device: str | None = None, autocast: bool = False,
                 input_size=None) -> Scorer:
    """FlowCLAS (or any images -> (B, H, W) module), one image at a time.

    ``input_size`` None: at the image's native resolution; otherwise as the runtime runs a
    bundle of that :class:`~flowclas_ros.bundle.preprocess.Resolution` (a fixed (h, w), or a
    Resolution / ``{"long_side": L}`` that keeps the frame's aspect): the frame resized to the
    model's size, the score resized back. device: where to run; None keeps the module where it
    is. autocast: bf16 autocast (what training uses on CUDA). Puts the module in eval mode.
    """
    import torch

    from flowclas_ros.bundle.preprocess import Resolution
    from flowclas_ros.bundle.preprocess_torch import frame_to_input, resize_torch

    device = device or module_device(model)
    model = model.to(device).eval()
    device_type = torch.device(device).type
    resolution = Resolution.of(input_size) if input_size is not None else None

    def score(sample) -> np.ndarray:
        img = torch.from_numpy(np.ascontiguousarray(sample.image)).to(device)
        size = resolution.model_size(*img.shape[:2]) if resolution else tuple(img.shape[:2])
        x = frame_to_input(img, size)
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            s = model(x)[0].float()
        return resize_torch(s[None, None], tuple(img.shape[:2]))[0, 0].cpu().numpy()

    return score


def backend_scorer(backend) -> Scorer:
    """Score with a runtime Backend: its raw heatmap at input resolution."""

    def score(sample) -> np.ndarray:
        return backend.infer(sample.image, heatmap=True, mask=False, overlay=False).heatmap

    return score


def load_scorer(path: str | Path, device: str = "cpu",
                backend: str = "auto") -> tuple[Scorer, Callable[[], None]]:
    """--model PATH: a checkpoint file or a bundle directory -> (scorer, close)."""
    path = Path(path)
    if path.is_file():
        from flowclas_ros.model.checkpoint import load_model

        return model_scorer(load_model(path), device), (lambda: None)
    if path.is_dir():
        from flowclas_ros.runtime import create_backend

        b = create_backend(path, backend=backend, device=device)
        return backend_scorer(b), b.close
    raise FileNotFoundError(f"--model {path} does not exist "
                            "(a checkpoint file or a bundle folder)")


def void_ignored(label: np.ndarray, ignore) -> np.ndarray:
    """Return ``label`` (H, W) with VOID where ``ignore`` is set (a new array).

    ``ignore`` is an
    :class:`~flowclas_ros.outputs.ignore_mask.IgnoreMask` (resized to the label's size,
    nearest-neighbour; another aspect ratio raises its IgnoreMaskError) or an (H, W) bool
    array; None returns ``label`` unchanged.
    """
    from flowclas_ros.labels import VOID

    if ignore is None:
        return label
    h, w = label.shape[:2]
    m = ignore.for_size(h, w) if hasattr(ignore, "for_size") else np.asarray(ignore, bool)
    if m.shape != (h, w):
        raise ValueError(f"ignore mask of shape {m.shape} for a label of shape {(h, w)}")
    out = np.array(label, copy=True)
    out[m] = VOID
    return out


class IgnoringDataset:
    """A dataset of Samples whose ignored pixels are VOID (:func:`void_ignored`).

    What calibration (``export --ignore-mask``) and the validation protocol score with a
    robot's ignore mask. Indexable and iterable like the dataset it wraps.
    """

    def __init__(self, dataset, ignore):
        self.dataset, self.ignore = dataset, ignore

    def __len__(self) -> int:
        return len(self.dataset)

    def _void(self, sample):
        from dataclasses import replace

        return replace(sample, label=void_ignored(sample.label, self.ignore))

    def __getitem__(self, i):
        return self._void(self.dataset[i])

    def __iter__(self):
        return (self._void(s) for s in self.dataset)


__all__ = ["EvaluationError", "IgnoringDataset", "ScoreFolder", "Scorer", "backend_scorer",
           "load_scorer", "model_scorer", "module_device", "read_score_map", "void_ignored"]
