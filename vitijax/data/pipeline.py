"""grain input pipelines: training (shuffled, augmented, per-host shards) and evaluation (ordered, padded).

Sources are random-access sequences of examples (a TFDS ``data_source``, or a
plain list for tests) whose elements hold, at least:

* ``image`` [h, w, 3] uint8 -- the face crop;
* ``face_mask`` and ``vitiligo_mask`` [h, w] or [h, w, 1] uint8 {0, 1}.

The network input is the crop multiplied by the face mask (the paper's
"masked crop"; switchable), resized to ``input_size`` (multiples of 8) and
normalised with ImageNet's mean/std on RGB/255 (as the official DDRNet). The
label is the vitiligo mask, or the face mask for the face-mask network.

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
    label: str = "vitiligo"  # "vitiligo" (lesion network) or "face" (face-mask network)
    mask_input: bool = True  # multiply the crop by the face mask, as the paper
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation_deg: float = 10.0
    flip: bool = True
    brightness: float = 0.15  # additive, fraction of 255
    contrast: float = 0.2  # multiplicative, +-
    uv_tone: float = 0.08  # per-channel gain, +-: the violet/blue balance of UV lamps varies
    blur_prob: float = 0.3
    max_blur_sigma: float = 1.2  # pixels of the network input

    def __post_init__(self):
        h, w = self.input_size
        if h % 8 or w % 8:
            raise ValueError(f"input_size must be multiples of 8 (DDRNet), got {self.input_size}")
        if self.label not in ("vitiligo", "face"):
            raise ValueError(f"label must be 'vitiligo' or 'face', got {self.label!r}")


def _mask2d(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    return m[..., 0] if m.ndim == 3 else m


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _warp(arr: np.ndarray, inverse: tuple[float, ...], size_hw: tuple[int, int], resample) -> np.ndarray:
    """Applies an affine map (PIL's output->input coefficients) to a [h, w] or [h, w, 3] uint8 array."""
    img = Image.fromarray(arr)
    out = img.transform((size_hw[1], size_hw[0]), Image.Transform.AFFINE, inverse, resample=resample, fillcolor=0)
    return np.asarray(out)


def _affine(src_hw, dst_hw, scale=1.0, angle_deg=0.0, shift=(0.0, 0.0), flip=False) -> tuple[float, ...]:
    """Output->input affine coefficients: fit the source to the output, then scale/rotate/shift/flip about the centre."""
    sh, sw = src_hw
    dh, dw = dst_hw
    base = (dh / sh, dw / sw)  # crops are square, so the fit is isotropic in practice
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


def prepare(example: dict, cfg: PipelineConfig, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One example -> {'image': float32 [h, w, 3] normalised, 'label': int32 [h, w], ...}.

    With ``rng`` the example is augmented (training); without, it is only
    resized (evaluation). Also returns the resized face mask ('face' [h, w]
    uint8) and the view after any flip.
    """
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
    x = img.astype(np.float32)
    if rng is not None:
        if rng.random() < cfg.blur_prob:
            x = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, cfg.max_blur_sigma))),
                           np.float32)
        gain = (1 + rng.uniform(-cfg.contrast, cfg.contrast)) * (1 + rng.uniform(-cfg.uv_tone, cfg.uv_tone, 3))
        x = x * gain.astype(np.float32) + np.float32(rng.uniform(-cfg.brightness, cfg.brightness) * 255)
        x = np.clip(x, 0, 255)
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
        return {"image": out["image"], "label": out["label"]}


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
    zero examples whose ``valid`` is 0. Each batch: 'image', 'label', 'face',
    'valid' (uint8 [b]), 'index' (int64 [b], -1 for padding) and the example
    fields named in ``keys`` (padding holds None).
    """
    n = len(source)
    per_host = -(-n // shard_count)
    num_batches = -(-per_host // batch_size)
    mine = list(range(shard_index, n, shard_count))
    h, w = cfg.input_size
    for b in range(num_batches):
        idx = mine[b * batch_size:(b + 1) * batch_size]
        batch = {"image": np.zeros((batch_size, h, w, 3), np.float32), "label": np.zeros((batch_size, h, w), np.int32),
                 "face": np.zeros((batch_size, h, w), np.uint8), "valid": np.zeros(batch_size, np.uint8),
                 "index": np.full(batch_size, -1, np.int64)}
        extra = {k: [None] * batch_size for k in keys}
        for j, i in enumerate(idx):
            ex = source[i]
            out = prepare(ex, cfg)
            batch["image"][j], batch["label"][j], batch["face"][j] = out["image"], out["label"], out["face"]
            batch["valid"][j], batch["index"][j] = 1, i
            for k in keys:
                extra[k][j] = ex.get(k)
        batch.update(extra)
        yield batch
