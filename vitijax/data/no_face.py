"""Photos that hold no face: the negatives that teach the face-box network to say "no face".

The face-box network regresses one box for any input, so on its own it boxes
a "face" in a white frame or in random noise, and the chain then reports an
F-Vitiligo for a photo of nothing. Its presence head is trained on a mix of
the data set's photos (label 1) and photos made from them here (label 0),
drawn per example so that no extra data is needed:

* ``blank``       -- one flat colour: white, black, grey or tinted;
* ``noise``       -- random noise, grey or colour, from pixel-fine to blobs of a
                     tenth of the frame (sensor noise, a photo of a textured wall);
* ``gradient``    -- a smooth ramp between two colours, with mild noise;
* ``background``  -- the part of the photo beside, above or below the face box
                     (hair, ears, neck, clothes, backdrop): other body parts;
* ``skin_patch``  -- a heavily cropped face: a window inside the face box of
                     20-40 % of its side (skin, lesions, at most part of an eye),
                     blown up to the frame.

:func:`no_face_photo` draws one with a numpy Generator; evaluation uses
:func:`evaluation_negative`, a fixed negative per example index, so every
validation run scores the same photos.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("blank", "noise", "gradient", "background", "skin_patch")


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def no_face_photo(photo: np.ndarray, box, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A photo without a face, uint8 [h', w', 3], made from ``photo`` [h, w, 3] uint8 whose face is in
    ``box`` (x0, y0, x1, y1, photo pixels). ``kind`` (one of :data:`KINDS`) or a random one."""
    h, w = photo.shape[:2]
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind == "blank":
        level = rng.choice([0.0, 255.0, rng.uniform(0, 255)])
        colour = np.clip(level + rng.normal(0, 25, 3) * (rng.random() < 0.5), 0, 255)
        return np.broadcast_to(colour.astype(np.uint8), (h, w, 3)).copy()
    if kind == "noise":
        cells = int(rng.choice([4, 16, 64, 256, max(h, w)]))
        small = (max(1, round(h * cells / max(h, w))), max(1, round(w * cells / max(h, w))))
        channels = 3 if rng.random() < 0.5 else 1
        noise = rng.integers(0, 256, (*small, channels), dtype=np.uint8)
        noise = np.repeat(noise, 3, axis=2) if channels == 1 else noise
        return _resize(noise, (h, w)) if small != (h, w) else noise
    if kind == "gradient":
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = a + (b - a) * t[..., None] + rng.normal(0, 4, (h, w, 1))
        return np.clip(img, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if kind == "background":
        # the largest strip of the photo that does not touch the face box
        strips = [(0, 0, w, y0), (0, y1, w, h), (0, 0, x0, h), (x1, 0, w, h)]
        sx0, sy0, sx1, sy1 = max(strips, key=lambda s: (s[2] - s[0]) * (s[3] - s[1]))
        if (sx1 - sx0) < 16 or (sy1 - sy0) < 16:
            return no_face_photo(photo, box, rng, "noise")
        return photo[sy0:sy1, sx0:sx1].copy()
    if kind == "skin_patch":
        bw, bh = x1 - x0, y1 - y0
        if bw < 8 or bh < 8:
            return no_face_photo(photo, box, rng, "blank")
        side = max(4, int(min(bw, bh) * rng.uniform(0.2, 0.4)))
        px = int(rng.integers(x0, max(x0 + 1, x1 - side)))
        py = int(rng.integers(y0, max(y0 + 1, y1 - side)))
        return _resize(photo[py:py + side, px:px + side], (h, w))
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def evaluation_negative(photo: np.ndarray, box, index: int) -> np.ndarray:
    """The fixed no-face photo of evaluation example ``index``: kinds in turn, seeded by the index."""
    return no_face_photo(photo, box, np.random.default_rng(7919 + index), KINDS[index % len(KINDS)])
