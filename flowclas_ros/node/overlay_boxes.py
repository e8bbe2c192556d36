"""The reported regions drawn on the overlay: each one's box and its id, in numpy (no OpenCV).

:func:`draw_regions` draws, on a (H, W, 3) uint8 BGR overlay, a 2-pixel box along the outside
of each region's pixel-edge box (the region's own pixels stay visible) and its id above the box
(inside it at the top of the image) in a 3x5 digit font scaled 2x, white on black. Ids are the
persistence ids (digits); other characters are skipped. Cost: the box outlines and a few glyphs,
independent of the image size (a copy of the overlay first when it is read-only).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

BOX_BGR = (255, 255, 255)
TEXT_BGR = (255, 255, 255)
TEXT_BACK = (0, 0, 0)
THICK = 2
SCALE = 2

_GLYPHS = {  # 5 rows of 3 columns, "#" = ink
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
}


def _glyph(ch: str) -> np.ndarray:
    bits = np.array([[c == "#" for c in row] for row in _GLYPHS[ch]], dtype=bool)
    return np.repeat(np.repeat(bits, SCALE, 0), SCALE, 1)


_FONT = {ch: _glyph(ch) for ch in _GLYPHS}
GLYPH_H, GLYPH_W = 5 * SCALE, 3 * SCALE


def _text(img: np.ndarray, text: str, x: int, y: int) -> None:
    """``text`` (digits) with its top-left corner at (x, y), on a black plate, clipped."""
    chars = [c for c in text if c in _FONT]
    if not chars:
        return
    h, w = img.shape[:2]
    pad = 1
    width = len(chars) * (GLYPH_W + SCALE) - SCALE + 2 * pad
    height = GLYPH_H + 2 * pad
    plate = np.zeros((height, width), dtype=bool)
    for k, c in enumerate(chars):
        x0 = pad + k * (GLYPH_W + SCALE)
        plate[pad:pad + GLYPH_H, x0:x0 + GLYPH_W] = _FONT[c]
    r0, c0 = max(y, 0), max(x, 0)
    r1, c1 = min(y + height, h), min(x + width, w)
    if r1 <= r0 or c1 <= c0:
        return
    part = plate[r0 - y:r1 - y, c0 - x:c1 - x]
    view = img[r0:r1, c0:c1]
    view[...] = TEXT_BACK
    view[part] = TEXT_BGR


def draw_regions(overlay: np.ndarray, boxes: Iterable[tuple[int, int, int, int]],
                 ids: Iterable[str]) -> np.ndarray:
    """Draw each box and its id on ``overlay``.

    Boxes are ``(x, y, width, height)`` (pixel-edge, input pixels) on an (H, W, 3) uint8
    image; returns the image drawn on (``overlay`` itself when it is writable, else a copy).
    """
    boxes, ids = list(boxes), list(ids)
    if not boxes:
        return overlay
    img = overlay if overlay.flags.writeable else np.array(overlay)
    h, w = img.shape[:2]
    colour = np.array(BOX_BGR, dtype=np.uint8)
    for (x, y, bw, bh), ident in zip(boxes, ids):
        x0, y0 = max(x - THICK, 0), max(y - THICK, 0)
        x1, y1 = min(x + bw + THICK, w), min(y + bh + THICK, h)
        img[y0:min(y, h), x0:x1] = colour  # top
        img[max(y + bh, 0):y1, x0:x1] = colour  # bottom
        img[y0:y1, x0:min(x, w)] = colour  # left
        img[y0:y1, max(x + bw, 0):x1] = colour  # right
        ty = y0 - GLYPH_H - 2 if y0 - GLYPH_H - 2 >= 0 else y0 + THICK
        _text(img, str(ident), x0, ty)
    return img


__all__ = ["draw_regions"]
