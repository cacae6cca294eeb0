"""Reading photographs and masks, with errors that name the file and the problem.

Photos: JPEG, PNG, TIFF, ...; EXIF orientation applied; 16-bit scaled to 8-bit;
grey, palette and RGBA converted to RGB. Masks: one channel (or RGB with equal
channels), values {0, 1} or {0, 255}, or anti-aliased (nearly all pixels near 0
or 255, a soft edge between: binarised at :data:`MASK_THRESHOLD`, and the count
of pixels that were neither 0 nor 255 reported); EXIF orientation applied as to
photos, so a photo and its masks stay aligned.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

MASK_THRESHOLD = 128  # an anti-aliased mask's pixel is foreground from this grey level up
MASK_NEAR = 10  # grey levels within this of 0 or 255 count as "near" black or white
MASK_NEAR_SHARE = 0.9  # an anti-aliased mask has at least this share of its pixels near 0 or 255
Image.MAX_IMAGE_PIXELS = 200_000_000  # clinical photos are large; still refuse decompression bombs


class ImageReadError(ValueError):
    """A photo or mask cannot be used; ``str()`` names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ImageReadError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too, before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode fully now: a truncated file fails here, not later
                return ImageOps.exif_transpose(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(path, f"image too large to be a photo, refused as a possible decompression bomb "
                                   f"(over {Image.MAX_IMAGE_PIXELS // 1_000_000} Mpx): {e}") from e
    except Exception as e:  # PIL raises several types for unreadable/truncated files
        raise ImageReadError(path, f"unreadable or truncated image ({type(e).__name__}: {e})") from e


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [h, w, 3] of the photo at ``path``, upright (EXIF applied)."""
    path = os.fspath(path)
    im = _open(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, np.float64)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, -1)
    if im.mode in ("RGB;16", "RGB;16B") or (im.mode == "RGB" and np.asarray(im).dtype == np.uint16):
        a = np.asarray(im, np.float64)
        return np.clip(a / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), np.uint8)


def read_mask(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None,
              softened: list[int] | None = None) -> np.ndarray:
    """A binary mask [h, w] uint8 {0, 1} from a {0,1} or {0,255} image, or an anti-aliased one
    (binarised at :data:`MASK_THRESHOLD`; the number of its pixels that were neither 0 nor 255 is
    appended to ``softened`` when given, so that a caller can report it).

    Raises ImageReadError for an unreadable file, a size other than
    ``expected_hw`` (the photo's), colour masks, or other values (a label map, say).
    """
    path = os.fspath(path)
    im = _open(path)
    a = np.asarray(im)
    if a.ndim == 3:
        if a.shape[2] == 4:
            a = a[..., :3]
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise ImageReadError(path, "mask has colour (its channels differ); save it as a one-channel image")
        a = a[..., 0]
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if expected_hw is not None and a.shape[:2] != tuple(expected_hw):
        raise ImageReadError(path, f"mask is {a.shape[1]}x{a.shape[0]} (w x h) but its photo is "
                                   f"{expected_hw[1]}x{expected_hw[0]}")
    values = np.unique(a)
    if set(values.tolist()) <= {0, 1}:
        return a.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (a > 0).astype(np.uint8)
    if a.dtype == np.uint8 and values.max() >= 245:
        near = ((a <= MASK_NEAR) | (a >= 255 - MASK_NEAR)).mean()
        if near >= MASK_NEAR_SHARE:  # anti-aliased: black and white with soft edges
            if softened is not None:
                softened.append(int(((a > 0) & (a < 255)).sum()))
            return (a >= MASK_THRESHOLD).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise ImageReadError(path, f"mask values must be {{0,1}} or {{0,255}} (or anti-aliased black and white), found "
                               f"{shown}; a label map? python -m launch.import_annotations --format labelmap")


def downscale(image: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    """``image`` shrunk (bilinear, or nearest neighbours for masks; never enlarged) so that its long side is at
    most ``max_side``."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(size, resample))


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 [h, w], [h, w, 1] or [h, w, 3] array."""
    a = np.asarray(array, np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_png(array))
