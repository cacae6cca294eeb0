"""What one stored example holds, and how it is made from a photo and its masks.

The same function feeds the TFDS builders (which PNG-encode the arrays) and the
in-memory sources used by tests: a face crop (square box around the face
box, see :mod:`vitijax.face`), its face and vitiligo masks, the whole photo
downscaled (what the face detector and face-box network consume), and the
metadata needed to trace it back: patient, visit, view, original size, crop
and face boxes, source file and hash, and the true ratio at full resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vitijax import face as face_lib
from vitijax.contract import CROP_MARGIN
from vitijax.data.io import downscale
from vitijax.metrics import f_vitiligo

PHOTO_MAX_SIDE = 1024  # the stored whole photo: enough for face detection, far smaller than 2832x4240


def make_example(image: np.ndarray, face_mask: np.ndarray, vitiligo_mask: np.ndarray, *, patient: str,
                 visit: int, view: str, source_file: str = "", source_sha256: str = "",
                 face_box: tuple[int, int, int, int] | None = None, margin: float = CROP_MARGIN,
                 max_side: int | None = None, photo_max_side: int = PHOTO_MAX_SIDE,
                 unassessable_mask: np.ndarray | None = None) -> dict[str, Any]:
    """One example from a full photo [h, w, 3] uint8 and its masks [h, w] {0, 1}.

    ``face_box`` defaults to the box of the face mask (until a detector gives
    one). Pixels of vitiligo outside the face mask are not vitiligo of the face
    and are removed from the stored mask (the caller reports them). With
    ``max_side``, crops larger than that are downscaled (image bilinear, masks
    nearest) to bound storage; metadata stays in photo pixels. The whole photo
    is stored with its long side at most ``photo_max_side``; its scale per axis
    is ``photo.shape[:2] / original_size``. ``unassessable_mask`` [h, w] {0, 1} (glare: where the skin
    cannot be judged; the synthetic truth) is cropped like the others and stored inside the face only.
    """
    if face_box is None:
        face_box = face_lib.box_from_mask(face_mask)
        if face_box is None:
            raise ValueError("empty face mask: no face box to crop")
    box = face_lib.crop_box(face_box, margin)
    vit = (vitiligo_mask > 0) & (face_mask > 0)
    crop_img = face_lib.crop(image, box)
    crop_face = face_lib.crop(face_mask.astype(np.uint8), box)
    crop_vit = face_lib.crop(vit.astype(np.uint8), box)
    crop_un = None if unassessable_mask is None else face_lib.crop(
        ((unassessable_mask > 0) & (face_mask > 0)).astype(np.uint8), box)
    if max_side and max(crop_img.shape[:2]) > max_side:
        size = (max_side, max_side)  # crops are square
        nearest = lambda m: np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST))  # noqa: E731
        crop_img = np.asarray(Image.fromarray(crop_img).resize(size, Image.Resampling.BILINEAR))
        crop_face, crop_vit = nearest(crop_face), nearest(crop_vit)
        crop_un = None if crop_un is None else nearest(crop_un)
    photo = downscale(image, photo_max_side)
    n_face, n_vit = int((face_mask > 0).sum()), int(vit.sum())
    extra = {} if crop_un is None else {"unassessable_mask": crop_un}
    return {**extra,
        "image": crop_img, "face_mask": crop_face, "vitiligo_mask": crop_vit,
        "photo": photo,
        "patient": patient, "visit": int(visit), "view": view,
        "original_size": np.array(image.shape[:2], np.int32),
        "crop_box": np.array(box, np.int32), "face_box": np.array(face_box, np.int32),
        "source_file": source_file, "source_sha256": source_sha256,
        "face_pixels": n_face, "vitiligo_pixels": n_vit,
        "ratio": np.float32(f_vitiligo(n_vit, n_face)),
    }
