"""The stages before the lesion network: face box, crop, and the way back to the photo.

Crop rule (documented once, used by the data set builders, training and
analysis): the face box is grown by ``margin`` of its larger side on every
side and made square around its centre, so that resizing the crop to the
square network input is isotropic. A square that reaches past the photo is
*not* shifted or clipped: the part outside the photo is zero-filled in the
crop, which keeps the face centred and the mapping a pure translation. Boxes
are (x0, y0, x1, y1) in photo pixels with exclusive ends.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def box_from_mask(mask: np.ndarray) -> Box | None:
    """The bounding box of the non-zero pixels of ``mask`` [h, w], or None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(face_box: Box, margin: float = 0.15) -> Box:
    """The square crop box around ``face_box``: side = larger face side * (1 + 2 * margin)."""
    x0, y0, x1, y1 = face_box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty face box {face_box}")
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    cx2, cy2 = x0 + x1, y0 + y1  # twice the centre, to stay in integers
    bx0 = (cx2 - side) // 2
    by0 = (cy2 - side) // 2
    return bx0, by0, bx0 + side, by0 + side


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` [h, w, ...] cut to ``box``; pixels of the box outside the photo are 0."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def paste_back(cropped: np.ndarray, box: Box, photo_hw: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`crop`: a photo-sized array, ``cropped`` at ``box``, 0 elsewhere.

    ``cropped`` must be at the box's size (resize a network's output first).
    """
    x0, y0, x1, y1 = box
    if cropped.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"crop of shape {cropped.shape[:2]} does not fit box {box}")
    h, w = photo_hw
    out = np.zeros((h, w, *cropped.shape[2:]), cropped.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = cropped[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out
