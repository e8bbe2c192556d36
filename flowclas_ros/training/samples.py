"""The training samples: one inlier frame -> a (mixed, aux) :class:`Pair`, and the epoch order.

A pair is made by :class:`PairMaker`: resize -> random rescale -> random crop -> paste one
outlier image's objects (the paster also returns the auxiliary outlier image at the same size;
``paste.mode: composite`` composites them on the estimated road instead) -> photometric changes
(:mod:`.augment`) -> flips, drawn independently for the mixed and the aux pair and applied to
image and label together. Several inlier sets are one sequence of frames (:class:`Frames`),
each scaled to its deployed long side first where one is set (:class:`LongSide`). With
``data.composite`` the road is estimated on the whole scaled frame and cropped with it
(:func:`ground_of`), so that small objects stand on the road of the crop at the frame's
perspective. What the loader reads for each pair (raw, or its cached features) is in
:mod:`.items`.

Determinism: every random choice is derived from the seed and *where* it is made, never from a
running generator: image i of epoch e is pasted with ``default_rng([seed, 0, e, i])``
(:func:`online_rng`), cache variant v of image i with ``default_rng([seed, 1, i, v])``
(:func:`variant_rng`), and the epoch order is ``default_rng([seed, 3, e]).permutation``
(:class:`EpochOrder`). A run killed after a checkpoint therefore replays exactly the same
samples as one that never stopped.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from ..bundle.preprocess import Resolution
from ..data.compositing import Ground, estimate_ground
from ..labels import VOID
from .augment import photometric
from .config import DataConfig


class Frames:
    """Several datasets (each with an optional limit) as one sequence of Samples."""

    def __init__(self, parts: list[tuple[object, int]]):
        self.parts = [(ds, n) for ds, n in parts if n > 0]
        self.offsets = np.cumsum([0] + [n for _, n in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        ds, _ = self.parts[k]
        return ds[i - int(self.offsets[k])]


class LongSide:
    """A dataset whose frames are scaled so that their long side is ``long_side`` pixels.

    Never enlarged (:class:`~flowclas_ros.bundle.preprocess.Resolution` ``long_side``,
    ``max_scale`` 1: the size a bundle of that resolution gives the model), image bilinear
    (antialiased), label nearest.
    """

    def __init__(self, dataset, long_side: int):
        self.dataset, self.resolution = dataset, Resolution(long_side=int(long_side))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = self.dataset[i]
        image, label = resize(s.image, s.label, list(self.resolution.model_size(*s.label.shape)))
        return dataclasses.replace(s, image=image, label=label)


class Pair(NamedTuple):
    """A training sample, all (H, W): the frame with outliers pasted and the auxiliary image."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8 INLIER / ANOMALY / VOID
    aux_image: np.ndarray
    aux_label: np.ndarray


def resize(image: np.ndarray, label: np.ndarray, size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, label nearest, to ``size`` (H, W)."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray, size: list[int], rng: np.random.Generator,
                ground: Ground | None = None):
    """Random crop to size (H, W); smaller images are padded (image 0, label VOID) first.

    With ``ground`` (the frame's road), the same window of it is returned third (padding is no
    road; the horizon row moves with the window).
    """
    ch, cw = size
    h, w = label.shape
    mask = ground.mask if ground is not None else None
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=VOID)
        mask = np.pad(mask, ((0, ph), (0, pw))) if mask is not None else None
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    out = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
    if ground is None:
        return out
    return (*out, Ground(mask[y:y + ch, x:x + cw], ground.horizon - y))


def ground_of(image: np.ndarray, label: np.ndarray, void_fraction: float = 0.5) -> Ground:
    """Estimate the road of an unlabelled frame.

    :func:`~flowclas_ros.data.compositing.estimate_ground` estimated on the rows above a VOID
    band across the bottom centre (the nuScenes hood: its reference patch would be the hood), no
    road below that band.
    """
    h, w = label.shape
    centre = (label[h // 2:, int(0.4 * w):max(int(0.6 * w), int(0.4 * w) + 1)] == VOID).mean(1)
    band = np.flatnonzero(centre >= void_fraction)
    bottom = h // 2 + int(band[0]) if band.size else h
    g = estimate_ground(image[:bottom])
    mask = np.zeros((h, w), bool)
    mask[:bottom] = g.mask
    return Ground(mask, g.horizon)


def random_flip(image: np.ndarray, label: np.ndarray, hflip: bool, vflip: bool,
                rng: np.random.Generator):
    # Both draws are always made so the random stream does not depend on the outcome.
    do_h, do_v = rng.random() < 0.5, rng.random() < 0.5
    if hflip and do_h:
        image, label = image[:, ::-1], label[:, ::-1]
    if vflip and do_v:
        image, label = image[::-1], label[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class PairMaker:
    """Training image ``i`` and a numpy Generator -> :class:`Pair`.

    Without a paster (no outlier source) the aux pair is the mixed pair itself (only the
    ``nll`` objective allows that).
    """

    def __init__(self, dataset, indices: list[int], paster, data: DataConfig, compositor=None):
        self.dataset, self.indices, self.paster = dataset, indices, paster
        self.compositor = compositor  # paste.mode composite: the mixed image comes from it
        self.data = data

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, i: int, rng: np.random.Generator) -> Pair:
        d = self.data
        sample = self.dataset[self.indices[i]]
        image, label = sample.image, sample.label
        if d.image_size:
            image, label = resize(image, label, d.image_size)
        crop = d.crop
        if d.scale_range:
            crop = crop or list(image.shape[:2])
            s = float(rng.uniform(*d.scale_range))
            h, w = image.shape[:2]
            image, label = resize(image, label, [max(int(round(h * s)), 1),
                                                 max(int(round(w * s)), 1)])
        # data.composite: the road of the whole frame, cropped with it (else: of the crop)
        ground = (ground_of(image, label)
                  if self.compositor is not None and d.composite is not None else None)
        if crop:
            if ground is None:
                image, label = random_crop(image, label, crop, rng)
            else:
                image, label, ground = random_crop(image, label, crop, rng, ground)
        if self.paster is not None:
            p = self.paster(image, label, rng)
            aux_image, aux_label = p.aux_image, p.aux_label
            if self.compositor is not None and ground is None:
                c = self.compositor(image, label, estimate_ground(image), rng)
                image, label = c.image, c.label
            elif self.compositor is not None and (d.composite_prob >= 1
                                                  or rng.random() < d.composite_prob):
                c = self.compositor(image, label, ground, rng)
                # no road in this crop: the hard-copied object instead, so it has one anyway
                image, label = (c.image, c.label) if c.objects else (p.image, p.label)
            else:
                image, label = p.image, p.label
        else:
            aux_image, aux_label = image, label
        image = photometric(image, d.photometric, rng)
        aux_image = photometric(aux_image, d.photometric, rng)
        image, label = random_flip(image, label, d.hflip, d.vflip, rng)
        aux_image, aux_label = random_flip(aux_image, aux_label, d.hflip, d.vflip, rng)
        return Pair(image, label, aux_image, aux_label)


def online_rng(seed: int, epoch: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0, epoch, i])


def variant_rng(seed: int, i: int, v: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, i, v])


def cache_variant(seed: int, epoch: int, i: int, variants: int) -> int:
    """Image i cycles through its cached variants from a seeded offset: all V in V epochs."""
    offset = int(np.random.default_rng([seed, 2, i]).integers(variants))
    return (epoch + offset) % variants


class EpochOrder:
    """The batches of one rank in one epoch; depends only on (seed, epoch, rank, world).

    A seeded permutation of the N images, padded by wrapping to a multiple of the world size
    (as DistributedSampler does), sharded ``rank::world`` and cut into full batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.per_rank = math.ceil(n / world)
        self.steps_per_epoch = self.per_rank // batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        perm = np.random.default_rng([self.seed, 3, epoch]).permutation(self.n)
        total = self.per_rank * self.world
        perm = np.resize(perm, total)  # wraps around
        mine = perm[self.rank::self.world]
        b = self.batch_size
        return [[(epoch, int(i)) for i in mine[k * b:(k + 1) * b]]
                for k in range(start, self.steps_per_epoch)]


__all__ = ["EpochOrder", "Frames", "LongSide", "Pair", "PairMaker", "cache_variant", "ground_of",
           "online_rng", "random_crop", "random_flip", "resize", "variant_rng"]
