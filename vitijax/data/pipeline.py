"""grain input pipelines: training (shuffled, augmented, per-host shards) and evaluation (ordered, padded).

Sources are random-access sequences of examples (a TFDS ``data_source``, or a
plain list for tests) whose elements hold, at least:

* ``image`` [h, w, 3] uint8 -- the face crop;
* ``face_mask`` and ``vitiligo_mask`` [h, w] or [h, w, 1] uint8 {0, 1};
* for the face-box network, ``photo`` (the whole photo), ``original_size`` and ``face_box``.

What a network consumes is its task's (``vitijax/tasks/``): each task turns an
example into network input and label with :func:`crop_example` or
:func:`photo_example` here, which apply the input contract through
:mod:`vitijax.inputs`, exactly as inference does, and in training compose the
augmentation of :class:`Augment` into the same affine map: random scale and
crop, small rotation, horizontal flip (which swaps the left and right views in
the example's metadata), brightness / contrast / UV-tone jitter and blur.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Iterator, Sequence

import grain.python as grain
import numpy as np
from PIL import Image, ImageFilter

from vitijax import inputs
from vitijax import tasks
from vitijax.contract import InputContract

FLIPPED_VIEW = {"left": "right", "right": "left", "front": "front"}


@dataclasses.dataclass(frozen=True)
class Augment:
    """How training examples are perturbed (``config.augment``); evaluation and inference use none."""
    flip: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation_deg: float = 10.0  # crops only: a rotated box's hull is not a face box
    shift: float = 0.08  # fraction of the input, +-
    brightness: float = 0.15  # additive, fraction of 255
    contrast: float = 0.2  # multiplicative, +-
    uv_tone: float = 0.08  # per-channel gain, +-: the violet/blue balance of UV lamps varies
    blur_prob: float = 0.3
    max_blur_sigma: float = 1.2  # pixels of the network input
    no_face_prob: float = 0.0  # face-box network: share of training photos replaced by one without a face
    strong_factor: float = 2.0  # lesion_semi: the strong view's photometric jitter, x the ranges above
    cutout: float = 0.0  # lesion_semi: side of the square blanked in the strong view, fraction of the input
    highlights: float = 0.0  # share of face crops given painted specular highlights (paint_highlights)

    def __post_init__(self):
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"augment.scale_range must be 0 < low <= high, got {self.scale_range}")
        if not 0 <= self.no_face_prob <= 1 or not 0 <= self.blur_prob <= 1 or not 0 <= self.highlights <= 1:
            raise ValueError("augment.no_face_prob, augment.blur_prob and augment.highlights are probabilities in [0, 1]")
        if not 0 <= self.cutout < 1 or self.strong_factor < 1:
            raise ValueError(f"augment.cutout must be in [0, 1) and augment.strong_factor >= 1, got "
                             f"{self.cutout} and {self.strong_factor}")


def _mask2d(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    return m[..., 0] if m.ndim == 3 else m


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def photometric(img: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """Random blur, contrast, UV tone and brightness of a uint8 image [h, w, 3] -> float32 in [0, 255]."""
    x = img.astype(np.float32)
    if rng.random() < aug.blur_prob:
        x = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, aug.max_blur_sigma))),
                       np.float32)
    gain = (1 + rng.uniform(-aug.contrast, aug.contrast)) * (1 + rng.uniform(-aug.uv_tone, aug.uv_tone, 3))
    x = x * gain.astype(np.float32) + np.float32(rng.uniform(-aug.brightness, aug.brightness) * 255)
    return np.clip(x, 0, 255)


LAMP = np.array([235.0, 238.0, 255.0], np.float32)  # the colour a UV lamp's specular reflection tends to


def paint_highlights(img: np.ndarray, face: np.ndarray, rng: np.random.Generator, level: float = 0.5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """1-4 specular highlights painted on a face crop: (the crop [h, w, 3] uint8, where they make at least
    ``level`` of a pixel's light [h, w] uint8 {0, 1}, inside ``face`` [h, w]).

    Each is an elliptical Gaussian lobe (the specular term of a shiny curved surface) centred on a face
    pixel, 3-15 % of the crop across, peaking at 50-95 % of the pixel's light, blending it towards the
    lamp's colour: glare where a data set has none annotated, for a glare-aware network (class 2 where
    the painted share reaches ``level``, as the synthetic truth's ``GLARE_LEVEL``)."""
    h, w = face.shape
    ys, xs = np.nonzero(face)
    glare = np.zeros((h, w), np.float32)
    if ys.size:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(int(rng.integers(1, 5))):
            k = int(rng.integers(ys.size))
            r = rng.uniform(0.03, 0.15) * max(h, w)
            t, squash = rng.uniform(0, np.pi), rng.uniform(0.5, 1.0)
            u = ((xx - xs[k]) * np.cos(t) + (yy - ys[k]) * np.sin(t)) / r
            v = (-(xx - xs[k]) * np.sin(t) + (yy - ys[k]) * np.cos(t)) / (r * squash)
            lobe = rng.uniform(0.5, 0.95) * np.exp(-(u * u + v * v))
            glare = 1 - (1 - glare) * (1 - lobe)
    tint = LAMP * np.float32(rng.uniform(0.9, 1.05))
    out = img.astype(np.float32) + (tint - img) * glare[..., None]
    return np.clip(out, 0, 255).astype(np.uint8), ((glare >= level) & (face > 0)).astype(np.uint8)


def random_affine(hw: tuple[int, int], size: tuple[int, int], aug: Augment, rng: np.random.Generator):
    """(output->input affine coefficients, flipped?) of one random scale, rotation, shift and flip of a
    crop [h, w] onto the network input ``size``: the geometry of every augmented crop."""
    flip = bool(aug.flip and rng.random() < 0.5)
    coeffs = inputs.affine(hw, size, scale=rng.uniform(*aug.scale_range),
                           angle_deg=rng.uniform(-aug.max_rotation_deg, aug.max_rotation_deg),
                           shift=tuple(rng.uniform(-aug.shift, aug.shift, 2)), flip=flip)
    return coeffs, flip


def crop_example(example: dict, contract: InputContract, aug: Augment | None = None,
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """An example's face crop -> {'image': float32 [h, w, 3] network input, 'face' and 'lesion': uint8
    [h, w] masks at the input size, 'view': after any flip; 'unassessable' [h, w] uint8 too when the
    example stores an unassessable (glare) mask}. Without ``rng`` this is
    :func:`vitijax.inputs.crop_input` exactly (what inference feeds); with it, augmented by ``aug``."""
    image = np.asarray(example["image"], np.uint8)
    face = _mask2d(example["face_mask"]).astype(np.uint8)
    lesion = _mask2d(example["vitiligo_mask"]).astype(np.uint8)
    view = _text(example.get("view", ""))
    size = contract.size
    flip = False
    if rng is None:
        coeffs = inputs.affine(image.shape[:2], size)
    else:
        aug = aug or Augment()
        coeffs, flip = random_affine(image.shape[:2], size, aug, rng)
    img = inputs.warp(image, coeffs, size, Image.Resampling.BILINEAR)
    face_r = inputs.warp(face, coeffs, size, Image.Resampling.NEAREST)
    lesion_r = inputs.warp(lesion, coeffs, size, Image.Resampling.NEAREST)
    glare_r = None
    if example.get("unassessable_mask") is not None:
        glare = _mask2d(example["unassessable_mask"]).astype(np.uint8)
        glare_r = inputs.warp(glare, coeffs, size, Image.Resampling.NEAREST)
    if rng is not None and aug.highlights > 0:  # painted glare joins the annotated one
        painted = np.zeros(size, np.uint8)
        if rng.random() < aug.highlights:
            img, painted = paint_highlights(img, face_r, rng)
        glare_r = painted if glare_r is None else np.maximum(glare_r, painted)
    x = img.astype(np.float32) if rng is None else photometric(img, aug, rng)
    if contract.mask_input:
        x = x * face_r[..., None]
    out = {"image": inputs.normalise(x, contract), "face": face_r, "lesion": lesion_r,
           "view": FLIPPED_VIEW.get(view, view) if flip else view}
    if glare_r is not None:
        out["unassessable"] = glare_r
    return out


def photo_and_box(example: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the stored whole photo [h, w, 3] uint8, the face box [4] in that photo's pixels, float64).

    The stored ``face_box`` is in the original photo's pixels; the stored
    photo is downscaled, by ``photo.shape[:2] / original_size`` per axis.
    """
    photo = example["photo"]
    if isinstance(photo, (bytes, np.bytes_)):  # a TFDS source read with the photo left encoded
        photo = Image.open(io.BytesIO(photo)).convert("RGB")
    photo = np.asarray(photo, np.uint8)
    oh, ow = np.asarray(example["original_size"], np.float64)
    sy, sx = photo.shape[0] / oh, photo.shape[1] / ow
    return photo, np.asarray(example["face_box"], np.float64) * [sx, sy, sx, sy]


def photo_example(photo: np.ndarray, contract: InputContract, box=None, aug: Augment | None = None,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """A whole photo [h, w, 3] uint8 -> {'image': float32 [s, s, 3], letterboxed (:func:`inputs.photo_input`),
    'coeffs': float64 [6] output->input affine} and, given the face ``box`` (x0, y0, x1, y1, photo
    pixels), 'box' float32 [4] as fractions of ``s``, clipped to the input. With ``rng``: random scale,
    shift and flip (no rotation) and the photometric jitter of the crops, on the photo, not the bars."""
    if rng is None:
        x, coeffs = inputs.photo_input(photo, contract)
    else:
        aug = aug or Augment()
        flip = bool(aug.flip and rng.random() < 0.5)
        coeffs = inputs.affine(photo.shape[:2], contract.size, scale=rng.uniform(*aug.scale_range),
                               shift=tuple(rng.uniform(-0.1, 0.1, 2)), flip=flip, keep_aspect=True)
        img = inputs.warp(photo, coeffs, contract.size, Image.Resampling.BILINEAR)
        inside = inputs.warp(np.ones(photo.shape[:2], np.uint8), coeffs, contract.size, Image.Resampling.NEAREST)
        x = inputs.normalise(photometric(img, aug, rng) * inside[..., None], contract)
        coeffs = np.asarray(coeffs, np.float64)
    out = {"image": x, "coeffs": coeffs}
    if box is not None:
        s = contract.size[0]
        x0, y0, x1, y1 = box
        corners = inputs.forward(coeffs) @ np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1, 1, 1, 1]], np.float64)
        lo, hi = corners.min(axis=1), corners.max(axis=1)
        out["box"] = (np.clip(np.concatenate([lo, hi]), 0, s) / s).astype(np.float32)
    return out


class _TrainMap(grain.RandomMapTransform):
    """The task's prepare, augmented. Holds the task's *name* (a module does not pickle into grain's
    worker processes); the worker imports it."""

    def __init__(self, task: str, contract: InputContract, aug: Augment):
        self.task, self.contract, self.aug = task, contract, aug

    def random_map(self, element, rng: np.random.Generator):
        task = tasks.get(self.task)
        out = task.prepare(element, self.contract, self.aug, rng)
        return {k: out[k] for k in task.TRAIN_KEYS}


class _UnlabelledMap(grain.RandomMapTransform):
    """The task's ``prepare_unlabelled``: two views of one augmented crop, no label."""

    def __init__(self, task: str, contract: InputContract, aug: Augment):
        self.task, self.contract, self.aug = task, contract, aug

    def random_map(self, element, rng: np.random.Generator):
        return tasks.get(self.task).prepare_unlabelled(element, self.contract, self.aug, rng)


class _Paired:
    """Labelled and unlabelled batches side by side, one dict per step; its iterator's state holds both
    positions, so a resumed run continues both streams exactly."""

    def __init__(self, labelled: grain.DataLoader, unlabelled: grain.DataLoader):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __iter__(self):
        return _PairedIterator(iter(self.labelled), iter(self.unlabelled))


class _PairedIterator:
    def __init__(self, labelled, unlabelled):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {**next(self.labelled), **next(self.unlabelled)}

    def get_state(self) -> bytes:
        return json.dumps({"labelled": self.labelled.get_state().decode(),
                           "unlabelled": self.unlabelled.get_state().decode()}).encode()

    def set_state(self, state: bytes) -> None:
        both = json.loads(state)
        self.labelled.set_state(both["labelled"].encode())
        self.unlabelled.set_state(both["unlabelled"].encode())


def _loader(source, operations, seed, worker_count, shard_index, shard_count) -> grain.DataLoader:
    sampler = grain.IndexSampler(
        num_records=len(source), shuffle=True, seed=seed, num_epochs=None,
        shard_options=grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True))
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations, worker_count=worker_count)


def train_loader(source: Sequence[dict], task: str, contract: InputContract, aug: Augment, batch_size: int, *,
                 seed: int = 0, worker_count: int = 0, shard_index: int = 0, shard_count: int = 1,
                 unlabelled: Sequence[dict] | None = None, unlabelled_ratio: int = 1):
    """An endless, shuffled, augmented loader of this host's shard, batches of ``batch_size`` (per host),
    of what ``task`` (a name of :mod:`vitijax.tasks`) trains on. With ``unlabelled`` (examples without
    lesion masks, for a task with ``prepare_unlabelled``), each batch also holds ``unlabelled_ratio`` x
    ``batch_size`` of their two-view crops (the task's ``UNLABELLED_KEYS``).

    Deterministic given ``seed`` (shuffle order and augmentation draws depend
    only on the seed and the record's position), and checkpointable: its
    iterator's ``get_state()``/``set_state()`` resume the exact position.
    """
    if len(source) == 0:
        raise ValueError("the training source is empty")
    if unlabelled is not None and len(unlabelled) == 0:
        raise ValueError("the unlabelled source is empty")
    if worker_count > 0:
        import absl.flags  # grain's worker processes parse absl flags (grain issue 1355)

        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
    labelled = _loader(source, [_TrainMap(task, contract, aug), grain.Batch(batch_size, drop_remainder=True)],
                       seed, worker_count, shard_index, shard_count)
    if unlabelled is None:
        return labelled
    # another seed: the unlabelled stream's shuffle and augmentation are not the labelled one's
    extra = _loader(unlabelled, [_UnlabelledMap(task, contract, aug),
                                 grain.Batch(batch_size * unlabelled_ratio, drop_remainder=True)],
                    seed + 7919, worker_count, shard_index, shard_count)
    return _Paired(labelled, extra)


def eval_batches(source: Sequence[dict], task, contract: InputContract, batch_size: int, *, shard_index: int = 0,
                 shard_count: int = 1, keys: Sequence[str] = ()) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of ``source`` in order, every example exactly once, in padded batches of what
    ``task`` (a module of :mod:`vitijax.tasks`) evaluates on.

    Host ``i`` takes records i, i + n, i + 2n, ...; every host yields the same
    number of batches (so collectives line up) and pads its last ones with
    the task's zero example (``task.blank``) whose ``valid`` is 0. Each batch:
    the task's arrays, 'valid' (uint8 [b]), 'index' (int64 [b], -1 for
    padding) and the example fields named in ``keys`` (padding holds None).
    """
    n = len(source)
    per_host = -(-n // shard_count)
    num_batches = -(-per_host // batch_size)
    mine = list(range(shard_index, n, shard_count))
    blank = task.blank(contract)
    for b in range(num_batches):
        idx = mine[b * batch_size:(b + 1) * batch_size]
        examples = [source[i] for i in idx]
        pad = batch_size - len(idx)
        outs = [task.prepare(ex, contract) for ex in examples] + [blank] * pad
        batch = {k: np.stack([o[k] for o in outs]) for k in blank}
        batch["valid"] = np.array([1] * len(idx) + [0] * pad, np.uint8)
        batch["index"] = np.array(idx + [-1] * pad, np.int64)
        for k in keys:
            batch[k] = [ex.get(k) for ex in examples] + [None] * pad
        yield batch
