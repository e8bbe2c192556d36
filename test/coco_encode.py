"""COCO mask encoders for writing test fixtures (the package only ever decodes COCO masks)."""
from typing import Sequence

import numpy as np


def rle_encode(mask: np.ndarray) -> dict:
    """(h, w) bool mask -> uncompressed COCO RLE ``{"size": [h, w], "counts": [...]}``."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Inverse of flowclas_ros.data.coco.rle_counts_from_string."""
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)
