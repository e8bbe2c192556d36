"""What the training loader reads for image i of epoch e: a fresh pair, or its cached features.

:class:`OnlineItems` pastes the pair (with :func:`~.samples.online_rng`) and leaves the backbone
to the training step; :class:`CachedItems` reads the variant of image i that epoch e uses
(:func:`~.samples.cache_variant`) from the :class:`~.feature_cache.FeatureCache`. Both are
indexed by ``(epoch, i)`` keys, the batches of :class:`~.samples.EpochOrder`.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .feature_cache import FeatureCache
from .samples import PairMaker, cache_variant, online_rng


class OnlineItems(Dataset):
    """(epoch, i) -> raw pasted pair (uint8 arrays); the backbone runs in the training step."""

    def __init__(self, pairs: PairMaker, seed: int):
        self.pairs, self.seed = pairs, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, i = key
        return self.pairs(i, online_rng(self.seed, epoch, i))._asdict()


class CachedItems(Dataset):
    """(epoch, i) -> cached features and grid labels of one variant of image i."""

    def __init__(self, cache: FeatureCache, seed: int, aux: bool):
        self.cache, self.seed, self.aux = cache, seed, aux

    def __len__(self) -> int:
        return self.cache.n_images

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, i = key
        v = cache_variant(self.seed, epoch, i, self.cache.variants)
        return self.cache.item(i, v, aux=self.aux)


__all__ = ["CachedItems", "OnlineItems"]
