"""Overlays that show masks on photos.

``agreement`` follows the paper's Figure 3: agreement green, false positive
red, false negative blue. ``outlines`` draws mask borders so the photo stays
visible underneath (face mask yellow, vitiligo green by default).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GREEN, RED, BLUE, YELLOW = (40, 220, 40), (235, 40, 40), (40, 110, 255), (250, 210, 40)
MAGENTA = (230, 40, 230)  # what cannot be assessed (glare)


def _border(mask: np.ndarray, width: int) -> np.ndarray:
    m = mask > 0
    return m & ~ndimage.binary_erosion(m, iterations=max(1, width))


def outlines(image: np.ndarray, masks_and_colours, width: int | None = None) -> np.ndarray:
    """``image`` [h, w, 3] uint8 with the border of each (mask [h, w], RGB colour) drawn on it."""
    out = np.array(image, np.uint8, copy=True)
    width = width or max(1, round(min(image.shape[:2]) / 250))
    for mask, colour in masks_and_colours:
        out[_border(mask, width)] = colour
    return out


def agreement(image: np.ndarray, pred: np.ndarray, true: np.ndarray, region: np.ndarray | None = None,
              alpha: float = 0.55) -> np.ndarray:
    """Figure-3 colours over ``image``: TP green, FP red, FN blue; outside ``region`` dimmed."""
    out = np.array(image, np.float32, copy=True)
    p, t = pred > 0, true > 0
    for sel, colour in ((p & t, GREEN), (p & ~t, RED), (~p & t, BLUE)):
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    if region is not None:
        out[region == 0] *= 0.35
    return np.clip(out, 0, 255).astype(np.uint8)


def fit_height(image: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """``image`` [h, w(, 3)] uint8 resized to ``height`` rows, aspect kept (nearest for masks)."""
    from PIL import Image

    h, w = image.shape[:2]
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * height / h)), height), resample))


def grid(tiles: list[list[np.ndarray]], pad: int = 4, background: int = 255) -> np.ndarray:
    """Rows of equally sized [h, w, 3] uint8 tiles into one picture, with ``pad`` pixels between."""
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, ncol * (w + pad) + pad, 3), background, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tile
    return out
