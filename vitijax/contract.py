"""The input contract: what a network consumes, written once, stored with every model and read back.

An :class:`InputContract` is everything besides the weights that decides what
a network sees: the network input size, the crop rule (the face box grown by
``margin`` of its larger side on every side, made square; see
:func:`vitijax.face.crop_box`), what the input is made of (the face crop,
optionally multiplied by the face mask, with ImageNet's normalisation; or the
whole photo letterboxed with RetinaFace's), and the face finder's setting
(the long side RetinaFace sees). Training builds it from ``config.input``
(:meth:`InputContract.from_config`) and stores it whole as the ``input`` of
every best model, training checkpoint and bundle part
(:meth:`InputContract.to_meta`); every consumer (``Segmenter``,
``FaceBoxModel``, ``launch.evaluate``, ``Analyzer``) reads it back with
:meth:`InputContract.from_meta`. The data set builders record the margin
they cropped with, and a run refuses a data set cropped with another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vitijax.checkpoint import CheckpointError

CROP_MARGIN = 0.15  # the default crop margin: a fraction of the face box's larger side, on every side
DETECT_LONG_SIDE = 640  # pixels: the photo's long side as RetinaFace sees it
SOURCES = ("crop", "photo")  # the face crop (lesion, face-mask networks) or the whole photo (face-box network)


def check_keys(cfg: Mapping[str, Any], allowed, where: str) -> None:
    """Raises ``ValueError`` naming every key of ``cfg`` not in ``allowed`` (a misspelt or unused setting)."""
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown or unused here; "
                         f"{where} takes {', '.join(sorted(allowed))}")


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What one network consumes. ``size`` (h, w) in pixels, multiples of 8; ``margin`` a fraction."""
    size: tuple[int, int]
    source: str = "crop"  # "crop": the square face crop stretched to size; "photo": the photo letterboxed
    margin: float = CROP_MARGIN
    mask_input: bool = False  # crop x face mask (the paper's masked crop), for the lesion network
    normalisation: str = "imagenet"  # "imagenet" (RGB/255, mean/std) or "retinaface" (BGR minus mean)
    detect_long_side: int = DETECT_LONG_SIDE
    # The lesion network has a third class, "cannot be assessed" (glare), learnt from the data set's
    # unassessable masks; analysis leaves those pixels out of both counts of F-Vitiligo.
    unassessable: bool = False

    def __post_init__(self):
        h, w = (int(v) for v in self.size)
        object.__setattr__(self, "size", (h, w))
        if h <= 0 or w <= 0 or h % 8 or w % 8:
            raise ValueError(f"input size must be positive multiples of 8 (DDRNet's stride), got {self.size}")
        if self.source not in SOURCES:
            raise ValueError(f"input source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "photo" and h != w:
            raise ValueError(f"a letterboxed photo input is square, got {self.size}")
        if not 0.0 <= float(self.margin) <= 1.0:
            raise ValueError(f"crop margin must be in [0, 1] (a fraction of the face box's larger side), "
                             f"got {self.margin}")
        if self.unassessable and self.source != "crop":
            raise ValueError("an unassessable class needs the face crop as input (source 'crop')")
        if self.normalisation not in ("imagenet", "retinaface"):
            raise ValueError(f"normalisation must be 'imagenet' or 'retinaface', got {self.normalisation!r}")

    @property
    def lesion_classes(self) -> int:
        """The class count of a lesion network with this contract: skin and vitiligo, and unassessable
        when it has that class. Training and loading both hold a lesion network to it."""
        return 3 if self.unassessable else 2

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples: what a JSON round trip gives back, so stored == read)."""
        return {**dataclasses.asdict(self), "size": list(self.size)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, where: str) -> "InputContract":
        """From a model's stored ``input``. Models saved before the contract (vitijax 0.2) stored only
        size and mask_input: they were all trained on crops with the default margin, which is filled in
        (a task fills in what else its old models left out, ``tasks.load``)."""

        if not meta or "size" not in meta:
            raise CheckpointError(f"{where}: its meta does not say what input the network was trained on "
                                  "(a launch.convert checkpoint: evaluate it with launch.evaluate --input-size, or "
                                  "fine-tune it with launch.train, whose best/ records the input)")
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in meta.items() if k in fields}
        try:
            return cls(**{**known, "size": tuple(known["size"])})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: unusable input contract {dict(meta)}: {e}") from e
