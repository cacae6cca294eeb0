"""A trained DDRNet applied to face crops of any size: the face-mask network and the lesion network.

:class:`Segmenter` holds a DDRNet's variables and meta (from a model
checkpoint: a training workdir's ``best/`` or ``launch.convert`` output; or
from an inference bundle, :mod:`vitijax.bundle`). The meta says what the
network was trained on (input size, label, whether the input is masked), and
crops are prepared exactly as training's evaluation prepares them
(``data.pipeline.prepare``: resize to the input size, mask, ImageNet
normalisation). The main head's class probabilities (softmax, 1/8 of the
input) are resized bilinearly (half-pixel) straight to the crop's size, and
``metrics.foreground`` is the mask. Crops of several photos go through the network together, in batches
of exactly ``batch_size`` inputs (the last one padded with zeros; one compilation serves them all; 1
unless the caller sets it, as ``launch.analyze --batch-size`` does). A fixed batch makes every photo's
result independent of which photos share its batch: XLA's CPU convolutions round differently for a batch
of 1 and one of 4 (up to 3e-6 in a probability), never for a photo's place within a batch, nor for the
other inputs' values. So ``launch.analyze`` gives the same masks whether one process or several share
the photos.

Test-time augmentation: ``flips`` adds the mirrored crop, ``scales`` runs
the network at other input sizes (multiples of 8 near ``scale x`` the trained
size). Per pixel, the class probabilities of the member with the lowest
background probability are kept (a lesion any member sees is kept), and the
standard deviation of the lesion (class 1) probability across the members is
the per-pixel uncertainty. Why not the mean: on held-out synthetic photos the
network under-segments (precision about 90 %, recall about 78 %) and every
augmented member under-segments more (F-Vitiligo bias, true face box and
mask, 12 photos: plain -0.49 pp, mirrored -0.69, input x0.75 -1.30, x1.25
-1.86), so the mean of the members added their misses (MAE 0.61 -> 1.33 pp
with all six members). Plain + mirrored, kept per pixel as here: MAE 0.39 pp.
``launch.analyze --tta`` therefore uses the mirror only; other scales are left
to callers who measure them on their data (``launch.evaluate --bundle``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from vitijax import inputs, tasks
from vitijax.checkpoint import CheckpointError, load_model, resolve_model_dir
from vitijax.metrics import foreground
from vitijax.resize import resize_host


def _keep_lesion_any_member_sees(stack: np.ndarray) -> np.ndarray:
    """TTA of a glare-aware network: members' probabilities [m, h, w, 3] -> [h, w, 3]. Unassessable is the
    members' mean (a member that calls a pixel glare must not hide a lesion another one sees); skin against
    lesion is the member with the largest lesion-over-skin margin, rescaled to the rest of the pixel's
    probability, so :func:`metrics.foreground` reads lesion wherever any member does."""
    glare = stack[..., 2].mean(0)
    margin = stack[..., 1] - stack[..., 0]
    pick = np.argmax(margin, axis=0)[None, ..., None]
    chosen = np.take_along_axis(stack, pick, axis=0)[0]
    lesion_share = chosen[..., 1] / np.maximum(chosen[..., 0] + chosen[..., 1], 1e-12)
    rest = 1.0 - glare
    return np.stack([rest * (1 - lesion_share), rest * lesion_share, glare], -1).astype(np.float32)


class Segmenter:
    """A DDRNet and how to feed it (its input contract, :mod:`vitijax.contract`). ``expect`` ("lesion" or
    "face_mask") refuses a network of another task; ``where`` names the checkpoint in messages."""

    def __init__(self, variables: dict, meta: dict, *, where: str, expect: str | None = None, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        if meta.get("model") != "ddrnet":
            raise CheckpointError(f"{where}: a {meta.get('model')} checkpoint, not a DDRNet")
        self.task, model, self.contract = tasks.load(meta, where, expect)
        self.where, self.meta = where, meta

        def forward(v, x):
            out = model.apply(v, x, train=False)
            return jax.nn.softmax((out[0] if isinstance(out, tuple) else out).astype(np.float32), axis=-1)

        self._variables = jax.device_put({"params": variables["params"], "batch_stats": variables["batch_stats"]})
        self._fwd = jax.jit(forward)

    @classmethod
    def load(cls, model_dir: str, *, expect: str | None = None, batch_size: int = 1) -> "Segmenter":
        """From a model checkpoint directory (or a training workdir, whose ``best/`` is taken)."""
        directory = resolve_model_dir(model_dir)
        variables, meta = load_model(directory)
        return cls(variables, meta, where=directory, expect=expect, batch_size=batch_size)

    def _forward(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [n, h', w', classes] of network inputs ``xs`` (each [h, w, c]), run in batches of
        exactly ``batch_size`` (the last padded with zeros, whose outputs are dropped)."""
        n, b = len(xs), self.batch_size
        out = []
        for start in range(0, n, b):
            chunk = xs[start:start + b]
            x = np.stack(chunk + [np.zeros_like(chunk[0])] * (b - len(chunk)))
            out.append(np.asarray(self._fwd(self._variables, x))[:len(chunk)])
        return np.concatenate(out)

    def probabilities(self, crops: Sequence[np.ndarray], face_masks: Sequence[np.ndarray] | None = None, *,
                      flips: bool = False, scales: Sequence[float] = (1.0,)) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """For each crop [h, w, 3] uint8 (and its face mask [h, w] {0, 1} if the network takes masked
        input): (class probabilities [h', w', classes] at the network's output resolution for the
        trained input size, float32; std of the class-1 probability over the TTA members [h', w'], or
        None without TTA)."""
        if self.contract.mask_input and face_masks is None:
            raise ValueError(f"{self.where}: this network was trained on masked crops; give the face masks")
        base_h, base_w = self.contract.size
        out_hw = (base_h // 8, base_w // 8)
        members: list[list[np.ndarray]] = [[] for _ in crops]
        for scale in scales:
            size = (max(8, round(base_h * scale / 8) * 8), max(8, round(base_w * scale / 8) * 8))
            xs = []
            for i, crop in enumerate(crops):
                x = inputs.crop_input(np.asarray(crop, np.uint8), None if face_masks is None else face_masks[i],
                                      self.contract, size)
                xs += [x, x[:, ::-1]] if flips else [x]
            probs = self._forward(xs)
            per = 2 if flips else 1
            for i in range(len(crops)):
                for k in range(per):
                    p = probs[i * per + k]
                    p = p[:, ::-1] if k == 1 else p
                    members[i].append(p if p.shape[:2] == out_hw else resize_host(p, out_hw))
        result = []
        for ms in members:
            stack = np.stack(ms)  # [members, h', w', classes]
            if len(ms) == 1:
                result.append((stack[0], None))
                continue
            # Per pixel, the member that sees the least background: a lesion any member sees is kept
            # (measured: the lesion network misses lesions far more than it invents them, and every
            # augmented member misses more, so averaging adds their misses instead of cancelling noise).
            if stack.shape[-1] > 2:  # glare-aware: lesion against skin as above, glare by the members' mean
                result.append((_keep_lesion_any_member_sees(stack), stack[..., 1].std(0)))
                continue
            pick = np.argmin(stack[..., 0], axis=0)[None, ..., None]
            result.append((np.take_along_axis(stack, pick, axis=0)[0], stack[..., 1].std(0)))
        return result

    def __call__(self, crop: np.ndarray, face_mask: np.ndarray | None = None) -> np.ndarray:
        """The predicted mask of one crop (:func:`vitijax.metrics.foreground`), uint8 [h, w] {0, 1}."""
        probs, _ = self.probabilities([crop], None if face_mask is None else [face_mask])[0]
        return foreground(resize_host(probs, crop.shape[:2])).astype(np.uint8)

    def describe(self) -> dict[str, Any]:
        """What this network is, for reports."""
        m = self.meta
        return {"checkpoint": self.where, "variant": m.get("variant"), "input": m.get("input"),
                "step": m.get("step"), "validation_dice": m.get("validation_dice")}
