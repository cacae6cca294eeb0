"""Network input from a face crop or a whole photo: what training and inference share.

Imported by the data pipeline (training and its evaluation) and by the
inference path (``Segmenter``, ``FaceBoxModel``) alike, so a network sees in
analysis exactly what it saw in training. What goes in is set by the
network's :class:`vitijax.contract.InputContract`:

* ``source="crop"``: the square face crop [h, w, 3] uint8 resized (stretched;
  crops are square, so in practice isotropic) to ``size``, multiplied by the
  face mask when ``mask_input``, normalised with ImageNet's mean/std on RGB/255
  (as the official DDRNet). :func:`crop_input`.
* ``source="photo"``: the whole photo letterboxed into the square ``size``
  (scaled to fit, centred, black bars), BGR minus RetinaFace's mean.
  :func:`photo_input`; :func:`box_to_photo` maps a box back.

Geometry is one affine map (:func:`affine`, PIL's output->input
coefficients) applied by :func:`warp`; training's augmentation composes its
random scale, rotation, shift and flip into the same map.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vitijax.contract import InputContract
from vitijax.models.retinaface import preprocess

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet RGB mean, on [0, 1]
STD = np.array([0.229, 0.224, 0.225], np.float32)


def warp(arr: np.ndarray, inverse: tuple[float, ...], size_hw: tuple[int, int], resample) -> np.ndarray:
    """Applies an affine map (PIL's output->input coefficients) to a [h, w] or [h, w, 3] uint8 array.

    PIL's affine bilinear samples 2x2 pixels, so shrinking by k > 2 would
    alias (a full-resolution crop of 2500 pixels going to 256 keeps one pixel
    in ten). Images are first box-averaged by the integer part of k
    (``Image.reduce``), in training and inference alike; masks (nearest) are not.
    """
    img = Image.fromarray(arr)
    a, b, _, d, e, _ = inverse
    factor = int(math.sqrt(abs(a * e - b * d)))  # input pixels per output pixel, per axis
    if factor >= 2 and resample != Image.Resampling.NEAREST:
        img = img.reduce(factor)  # reduced pixel i covers input [i f, (i + 1) f): coordinates divide by f
        inverse = tuple(v / factor for v in inverse)
    out = img.transform((size_hw[1], size_hw[0]), Image.Transform.AFFINE, inverse, resample=resample, fillcolor=0)
    return np.asarray(out)


def affine(src_hw, dst_hw, scale=1.0, angle_deg=0.0, shift=(0.0, 0.0), flip=False,
           keep_aspect=False) -> tuple[float, ...]:
    """Output->input affine coefficients: fit the source to the output, then scale/rotate/shift/flip about the centre.

    The fit stretches each axis, or with ``keep_aspect`` scales both axes by
    the smaller factor (letterbox). ``shift`` is a fraction of the output size.
    """
    sh, sw = src_hw
    dh, dw = dst_hw
    base = (dh / sh, dw / sw)
    if keep_aspect:
        base = (min(base),) * 2
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    fx = -1.0 if flip else 1.0
    # Forward map (input -> output): centre, per-axis fit, flip, rotate, scale, shift, un-centre.
    # Inverse, for PIL: u = (x - cx_out - shift) rotated back, unscaled, unflipped, unfit, + cx_in.
    cxo, cyo = dw / 2 + shift[0] * dw, dh / 2 + shift[1] * dh
    cxi, cyi = sw / 2, sh / 2
    inv = np.array([[cos, sin], [-sin, cos]]) / scale
    inv = np.diag([fx / base[1], 1.0 / base[0]]) @ inv
    t = np.array([cxi, cyi]) - inv @ np.array([cxo, cyo])
    return (inv[0, 0], inv[0, 1], t[0], inv[1, 0], inv[1, 1], t[1])


def forward(coeffs) -> np.ndarray:
    """The input->output map [2, 3] of PIL's output->input affine coefficients."""
    a, b, c, d, e, f = coeffs
    return np.linalg.inv(np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]]))[:2]


def normalise(x: np.ndarray, contract: InputContract) -> np.ndarray:
    """RGB float [h, w, 3] on [0, 255] -> the network's float32 input [h, w, 3] (see the module doc)."""
    if contract.normalisation == "retinaface":

        return preprocess(x)[0].astype(np.float32)
    return ((x / 255.0 - MEAN) / STD).astype(np.float32)


def crop_input(crop: np.ndarray, face: np.ndarray | None, contract: InputContract,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """A face crop [h, w, 3] uint8 and its face mask [h, w] {0, 1} (needed when ``contract.mask_input``)
    -> the network input float32 [H, W, 3] at ``size`` (default ``contract.size``; TTA passes others)."""
    size = tuple(size or contract.size)
    coeffs = affine(crop.shape[:2], size)
    x = warp(np.asarray(crop, np.uint8), coeffs, size, Image.Resampling.BILINEAR).astype(np.float32)
    if contract.mask_input:
        if face is None:
            raise ValueError("this network was trained on masked crops; give the face mask")
        if face.shape != crop.shape[:2]:
            raise ValueError(f"face mask of shape {face.shape} for a crop of {crop.shape[:2]}")
        x = x * warp(np.asarray(face, np.uint8), coeffs, size, Image.Resampling.NEAREST)[..., None]
    return normalise(x, contract)


def photo_input(photo: np.ndarray, contract: InputContract) -> tuple[np.ndarray, np.ndarray]:
    """A whole photo [h, w, 3] uint8 -> (the face-box network's input float32 [s, s, 3], letterboxed;
    the output->input affine float64 [6], for :func:`box_to_photo`)."""
    coeffs = affine(photo.shape[:2], contract.size, keep_aspect=True)
    img = warp(np.asarray(photo, np.uint8), coeffs, contract.size, Image.Resampling.BILINEAR)
    return normalise(img.astype(np.float32), contract), np.asarray(coeffs, np.float64)


def box_to_photo(box, coeffs, input_side: int) -> np.ndarray:
    """A predicted box [4] (fractions of the input side) -> (x0, y0, x1, y1) float64 in the photo's pixels."""
    a, b, c, d, e, f = coeffs
    px = np.asarray(box, np.float64) * input_side
    xs = a * px[[0, 2]] + b * px[[1, 3]] + c
    ys = d * px[[0, 2]] + e * px[[1, 3]] + f
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])
