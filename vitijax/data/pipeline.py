"""grain input pipelines: training (shuffled, augmented, per-host shards) and evaluation (ordered, padded).

Sources are random-access sequences of examples (a TFDS ``data_source``, or a
plain list for tests) whose elements hold, at least:

* ``image`` [h, w, 3] uint8 -- the face crop;
* ``face_mask`` and ``vitiligo_mask`` [h, w] or [h, w, 1] uint8 {0, 1}.

The network input is the crop multiplied by the face mask (the paper's
"masked crop"; switchable), resized to ``input_size`` (multiples of 8) and
normalised with ImageNet's mean/std on RGB/255 (as the official DDRNet). The
label is the vitiligo mask, or the face mask for the face-mask network.

For the face-box network (``label="box"``) the input is instead the whole
photo (the example's ``photo``), letterboxed into the square ``input_size``
(scaled to fit, centred, black bars) with RetinaFace's normalisation, and the
label is the face box as fractions of the input side
(:func:`prepare_photo`; :func:`box_to_photo` maps predictions back), with
'present' 1; a share ``no_face_prob`` of training photos is replaced by a
photo without a face (:mod:`vitijax.data.no_face`), 'present' 0.

Training augmentation (joint on image and masks): random scale and crop,
small rotation, horizontal flip (which swaps the left and right views in the
example's metadata), brightness / contrast / UV-tone jitter and blur.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import grain.python as grain
import numpy as np
from PIL import Image, ImageFilter

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet RGB mean, on [0, 1]
STD = np.array([0.229, 0.224, 0.225], np.float32)
FLIPPED_VIEW = {"left": "right", "right": "left", "front": "front"}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the network consumes and how training examples are perturbed."""

    input_size: tuple[int, int] = (256, 256)  # (h, w), multiples of 8
    label: str = "vitiligo"  # "vitiligo" (lesion network), "face" (face-mask network) or "box" (face-box network)
    mask_input: bool = True  # multiply the crop by the face mask, as the paper
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation_deg: float = 10.0
    flip: bool = True
    brightness: float = 0.15  # additive, fraction of 255
    contrast: float = 0.2  # multiplicative, +-
    uv_tone: float = 0.08  # per-channel gain, +-: the violet/blue balance of UV lamps varies
    blur_prob: float = 0.3
    max_blur_sigma: float = 1.2  # pixels of the network input
    no_face_prob: float = 0.0  # face-box network: share of training photos replaced by one without a face

    def __post_init__(self):
        h, w = self.input_size
        if h % 8 or w % 8:
            raise ValueError(f"input_size must be multiples of 8 (DDRNet), got {self.input_size}")
        if self.label not in ("vitiligo", "face", "box"):
            raise ValueError(f"label must be 'vitiligo', 'face' or 'box', got {self.label!r}")
        if self.label == "box" and h != w:
            raise ValueError(f"the face-box network's input is square, got {self.input_size}")


def _mask2d(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    return m[..., 0] if m.ndim == 3 else m


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _warp(arr: np.ndarray, inverse: tuple[float, ...], size_hw: tuple[int, int], resample) -> np.ndarray:
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


def _affine(src_hw, dst_hw, scale=1.0, angle_deg=0.0, shift=(0.0, 0.0), flip=False,
            keep_aspect=False) -> tuple[float, ...]:
    """Output->input affine coefficients: fit the source to the output, then scale/rotate/shift/flip about the centre.

    The fit stretches each axis (crops are square, so it is isotropic in
    practice), or with ``keep_aspect`` scales both axes by the smaller factor
    (letterbox).
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


def _photometric(img: np.ndarray, cfg: PipelineConfig, rng: np.random.Generator) -> np.ndarray:
    """Random blur, contrast, UV tone and brightness of a uint8 image [h, w, 3] -> float32 in [0, 255]."""
    x = img.astype(np.float32)
    if rng.random() < cfg.blur_prob:
        x = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, cfg.max_blur_sigma))),
                       np.float32)
    gain = (1 + rng.uniform(-cfg.contrast, cfg.contrast)) * (1 + rng.uniform(-cfg.uv_tone, cfg.uv_tone, 3))
    x = x * gain.astype(np.float32) + np.float32(rng.uniform(-cfg.brightness, cfg.brightness) * 255)
    return np.clip(x, 0, 255)


def _forward(coeffs) -> np.ndarray:
    """The input->output map [2, 3] of PIL's output->input affine coefficients."""
    a, b, c, d, e, f = coeffs
    return np.linalg.inv(np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]]))[:2]


def photo_and_box(example: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the stored whole photo [h, w, 3] uint8, the face box [4] in that photo's pixels, float64).

    The stored ``face_box`` is in the original photo's pixels; the stored
    photo is downscaled, by ``photo.shape[:2] / original_size`` per axis.
    """
    photo = example["photo"]
    if isinstance(photo, (bytes, np.bytes_)):  # a TFDS source read with the photo left encoded
        import io

        photo = Image.open(io.BytesIO(photo)).convert("RGB")
    photo = np.asarray(photo, np.uint8)
    oh, ow = np.asarray(example["original_size"], np.float64)
    sy, sx = photo.shape[0] / oh, photo.shape[1] / ow
    return photo, np.asarray(example["face_box"], np.float64) * [sx, sy, sx, sy]


def prepare_photo(photo: np.ndarray, cfg: PipelineConfig, box=None,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """A whole photo [h, w, 3] uint8 -> the face-box network's input, letterboxed into ``input_size``.

    Returns {'image': float32 [s, s, 3] (BGR minus RetinaFace's mean),
    'coeffs': float64 [6], the output->input affine (for :func:`box_to_photo`)}
    and, given the face ``box`` (x0, y0, x1, y1, photo pixels), 'box' float32
    [4] as fractions of ``s``, clipped to the input. With ``rng``: random
    scale, shift and flip (no rotation: a rotated box's hull is not a face
    box) and the photometric jitter of the crops.
    """
    from vitijax.models.retinaface import preprocess

    if rng is None:
        coeffs = _affine(photo.shape[:2], cfg.input_size, keep_aspect=True)
    else:
        flip = bool(cfg.flip and rng.random() < 0.5)
        coeffs = _affine(photo.shape[:2], cfg.input_size, scale=rng.uniform(*cfg.scale_range),
                         shift=tuple(rng.uniform(-0.1, 0.1, 2)), flip=flip, keep_aspect=True)
    img = _warp(photo, coeffs, cfg.input_size, Image.Resampling.BILINEAR)
    x = img.astype(np.float32)
    if rng is not None:
        # jitter the photo, not the bars around it: they stay black as in inference
        inside = _warp(np.ones(photo.shape[:2], np.uint8), coeffs, cfg.input_size, Image.Resampling.NEAREST)
        x = _photometric(img, cfg, rng) * inside[..., None]
    out = {"image": preprocess(x)[0].astype(np.float32), "coeffs": np.asarray(coeffs, np.float64)}
    if box is not None:
        s = cfg.input_size[0]
        x0, y0, x1, y1 = box
        corners = _forward(coeffs) @ np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1, 1, 1, 1]], np.float64)
        lo, hi = corners.min(axis=1), corners.max(axis=1)
        out["box"] = (np.clip(np.concatenate([lo, hi]), 0, s) / s).astype(np.float32)
    return out


def box_to_photo(box, coeffs, input_side: int) -> np.ndarray:
    """A predicted box [4] (fractions of the input side) -> (x0, y0, x1, y1) float64 in the photo's pixels."""
    a, b, c, d, e, f = coeffs
    px = np.asarray(box, np.float64) * input_side
    xs = a * px[[0, 2]] + b * px[[1, 3]] + c
    ys = d * px[[0, 2]] + e * px[[1, 3]] + f
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def prepare(example: dict, cfg: PipelineConfig, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One example -> {'image': float32 [h, w, 3] normalised, 'label': int32 [h, w], ...}.

    With ``rng`` the example is augmented (training); without, it is only
    resized (evaluation). Also returns the resized face mask ('face' [h, w]
    uint8) and the view after any flip. For ``cfg.label == "box"``: the whole
    photo's {'image', 'box', 'coeffs'} (see :func:`prepare_photo`) and
    'to_original' [2], the (x, y) scale from the stored photo to the original.
    """
    if cfg.label == "box":
        photo, box = photo_and_box(example)
        # per axis (x, y): stored photo pixels -> original photo pixels
        to_original = (np.asarray(example["original_size"], np.float64) / photo.shape[:2])[::-1].copy()
        present = bool(example.get("face_present", True))
        if present and rng is not None and cfg.no_face_prob > 0 and rng.random() < cfg.no_face_prob:
            from vitijax.data.no_face import no_face_photo

            photo, present = no_face_photo(photo, box, rng), False
        out = prepare_photo(photo, cfg, box if present else None, rng)
        if not present:  # no box to learn: the loss leaves it out
            out["box"] = np.zeros(4, np.float32)
        out["present"] = np.float32(present)
        out["to_original"] = to_original
        return out
    image = np.asarray(example["image"], np.uint8)
    face = _mask2d(example["face_mask"]).astype(np.uint8)
    lesion = _mask2d(example["vitiligo_mask"]).astype(np.uint8)
    src_hw = image.shape[:2]
    view = _text(example.get("view", ""))
    if rng is None:
        coeffs = _affine(src_hw, cfg.input_size)
        flip = False
    else:
        flip = bool(cfg.flip and rng.random() < 0.5)
        coeffs = _affine(src_hw, cfg.input_size, scale=rng.uniform(*cfg.scale_range),
                         angle_deg=rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg),
                         shift=tuple(rng.uniform(-0.08, 0.08, 2)), flip=flip)
    img = _warp(image, coeffs, cfg.input_size, Image.Resampling.BILINEAR)
    face_r = _warp(face, coeffs, cfg.input_size, Image.Resampling.NEAREST)
    lesion_r = _warp(lesion, coeffs, cfg.input_size, Image.Resampling.NEAREST)
    x = img.astype(np.float32) if rng is None else _photometric(img, cfg, rng)
    if cfg.mask_input:
        x = x * face_r[..., None]
    x = (x / 255.0 - MEAN) / STD
    label = lesion_r if cfg.label == "vitiligo" else face_r
    return {"image": x.astype(np.float32), "label": label.astype(np.int32), "face": face_r,
            "view": FLIPPED_VIEW.get(view, view) if flip else view}


class _TrainMap(grain.RandomMapTransform):
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def random_map(self, element, rng: np.random.Generator):
        out = prepare(element, self.cfg, rng)
        keys = ("image", "box", "present") if self.cfg.label == "box" else ("image", "label")
        return {k: out[k] for k in keys}


def _blank(cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """A padding example: zeros of every array a prepared evaluation example holds."""
    h, w = cfg.input_size
    if cfg.label == "box":
        return {"image": np.zeros((h, w, 3), np.float32), "box": np.zeros(4, np.float32),
                "present": np.float32(0), "coeffs": np.zeros(6, np.float64), "to_original": np.zeros(2, np.float64)}
    return {"image": np.zeros((h, w, 3), np.float32), "label": np.zeros((h, w), np.int32),
            "face": np.zeros((h, w), np.uint8)}


def train_loader(source: Sequence[dict], cfg: PipelineConfig, batch_size: int, *, seed: int = 0,
                 worker_count: int = 0, shard_index: int = 0, shard_count: int = 1) -> grain.DataLoader:
    """An endless, shuffled, augmented loader of this host's shard, batches of ``batch_size`` (per host).

    Deterministic given ``seed`` (shuffle order and augmentation draws depend
    only on the seed and the record's position), and checkpointable: its
    iterator's ``get_state()``/``set_state()`` resume the exact position.
    """
    if len(source) == 0:
        raise ValueError("the training source is empty")
    if worker_count > 0:
        import absl.flags  # grain's worker processes parse absl flags (grain issue 1355)

        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
    sampler = grain.IndexSampler(
        num_records=len(source), shuffle=True, seed=seed, num_epochs=None,
        shard_options=grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True))
    return grain.DataLoader(data_source=source, sampler=sampler,
                            operations=[_TrainMap(cfg), grain.Batch(batch_size, drop_remainder=True)],
                            worker_count=worker_count)


def eval_batches(source: Sequence[dict], cfg: PipelineConfig, batch_size: int, *, shard_index: int = 0,
                 shard_count: int = 1, keys: Sequence[str] = ()) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of ``source`` in order, every example exactly once, in padded batches.

    Host ``i`` takes records i, i + n, i + 2n, ...; every host yields the same
    number of batches (so collectives line up) and pads its last ones with
    zero examples whose ``valid`` is 0. Each batch: 'image', 'label' and
    'face' (or 'box', 'coeffs', 'to_original' for the face-box network), 'valid' (uint8 [b]), 'index'
    (int64 [b], -1 for padding) and the example fields named in ``keys``
    (padding holds None).
    """
    n = len(source)
    per_host = -(-n // shard_count)
    num_batches = -(-per_host // batch_size)
    mine = list(range(shard_index, n, shard_count))
    blank = _blank(cfg)
    for b in range(num_batches):
        idx = mine[b * batch_size:(b + 1) * batch_size]
        examples = [source[i] for i in idx]
        pad = batch_size - len(idx)
        outs = [prepare(ex, cfg) for ex in examples] + [blank] * pad
        batch = {k: np.stack([o[k] for o in outs]) for k in blank}
        batch["valid"] = np.array([1] * len(idx) + [0] * pad, np.uint8)
        batch["index"] = np.array(idx + [-1] * pad, np.int64)
        for k in keys:
            batch[k] = [ex.get(k) for ex in examples] + [None] * pad
        yield batch
