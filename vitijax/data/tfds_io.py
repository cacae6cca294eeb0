"""The TFDS side of vitijax: the stored features, and loading the builders in ``vitijax/datasets/``.

TensorFlow is neither installed nor imported: the builders write
``array_record`` files and yield PNG *bytes*, and reading goes through
``builder.as_data_source()`` (random access, numpy), which grain consumes.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import sys
from typing import Any

import numpy as np

from vitijax.data.io import encode_png

DATASETS_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets"
DATA_DIR_ENV = "VITIJAX_DATA_DIR"


def default_data_dir() -> str:
    """Where data sets are built and read unless told: ``$VITIJAX_DATA_DIR``, else ``data/tfds`` (relative to
    the working directory). build_dataset, the training configs and evaluate all default to it."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join("data", "tfds")


DEFAULT_DATA_DIR = default_data_dir()


SPLIT_FIELDS = ("folds", "val_fraction", "test_fraction", "seed", "max_side", "face_model")


def info_metadata(config, face_mask_source: str):
    """What a build records besides its examples: the crop margin it cut with, where face masks came from,
    and the split options (and stored crop size) it was built with."""
    import tensorflow_datasets as tfds

    split = {k: getattr(config, k) for k in SPLIT_FIELDS if hasattr(config, k)}
    return tfds.core.MetadataDict(crop_margin=float(config.crop_margin), face_mask_source=face_mask_source,
                                  build_options=split)


def with_options(builder, **options):
    """``builder`` building its config with ``options`` (split fractions, folds, seed, max_side, allow_skips)
    changed, under the config's own name: the shipped training configs find the data set whatever split
    was chosen, and the options are recorded in its metadata (:func:`info_metadata`). A data set already
    built there with other options is refused, naming what differs: a rebuild never silently keeps an old
    split."""
    try:
        config = dataclasses.replace(builder.builder_config, **options)
    except TypeError as e:  # e.g. --folds on the synthetic builder
        raise ValueError(f"{builder.name} does not take {', '.join(sorted(options))}: {e}") from e
    builder._builder_config = config  # TFDS refuses a custom config named like a shipped one; this is that config
    wanted = {k: getattr(config, k) for k in SPLIT_FIELDS if hasattr(config, k)}
    if is_prepared(builder):
        recorded = dict(builder.info.metadata.get("build_options", {})) if builder.info.metadata else {}
        diffs = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
        if diffs:
            raise ValueError(f"{builder.data_dir} already holds {builder.name}/{config.name} built with "
                             + ", ".join(f"{k}={a}" for k, (a, _) in diffs.items()) + "; remove that folder to "
                             "rebuild it with " + ", ".join(f"{k}={b}" for k, (_, b) in diffs.items())
                             + ", or build into another --data-dir")
    else:
        builder.info.metadata["build_options"] = wanted  # the info was made from the config before the options
    return builder


class QuietBuilder:
    """A mixin for vitijax's builders: nothing is downloaded, so TFDS's download wording is replaced."""

    def _log_download_bytes(self) -> None:
        print(f"building {self.name}/{self.builder_config.name} in {self.data_dir} (from local files; nothing is "
              "downloaded) ...", flush=True)

    def _log_download_done(self) -> None:
        pass  # launch.build_dataset says what was built


def features(unassessable: bool = False):
    """The FeaturesDict both builders store (images as lossless PNG); with ``unassessable``, also the
    crop's unassessable (glare) mask, which the synthetic builder knows."""
    import tensorflow_datasets as tfds

    img = lambda c: tfds.features.Image(shape=(None, None, c), encoding_format="png")  # noqa: E731
    extra = {"unassessable_mask": img(1)} if unassessable else {}  # {0, 1}, inside the face only
    return tfds.features.FeaturesDict({**extra,
        "image": img(3),  # the face crop, unmasked
        "face_mask": img(1),  # {0, 1}
        "vitiligo_mask": img(1),  # {0, 1}, inside the face only
        "photo": img(3),  # the whole photo, long side <= 1024 (scale: shape / original_size), for face stages
        "patient": tfds.features.Text(),
        "visit": tfds.features.Scalar(np.int32),
        "view": tfds.features.Text(),
        "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),  # photo (h, w)
        "crop_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),  # x0, y0, x1, y1 in photo pixels
        "face_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
        "source_file": tfds.features.Text(),
        "source_sha256": tfds.features.Text(),
        "face_pixels": tfds.features.Scalar(np.int64),  # at full resolution
        "vitiligo_pixels": tfds.features.Scalar(np.int64),
        "ratio": tfds.features.Scalar(np.float32),  # F-Vitiligo, percent, full resolution
    })


def encode(example: dict[str, Any]) -> dict[str, Any]:
    """An example of :func:`vitijax.data.records.make_example`, ready for the builder to yield."""
    out = dict(example)
    for k in ("image", "face_mask", "vitiligo_mask", "photo", "unassessable_mask"):
        if k in example:
            out[k] = encode_png(example[k])
    return out


def builder_class(name: str):
    """The builder class defined in ``vitijax/datasets/<name>/<name>_dataset_builder.py``.

    The builders are a subpackage of vitijax (not a top-level ``datasets``, which would clash with
    Hugging Face's), importable in every process: grain's workers unpickle sources made from them.
    """
    path = DATASETS_DIR / name / f"{name}_dataset_builder.py"
    if not path.is_file():
        known = sorted(p.name for p in DATASETS_DIR.iterdir() if p.is_dir()) if DATASETS_DIR.is_dir() else []
        raise ValueError(f"no TFDS builder {name!r} at {path}; known: {', '.join(known) or 'none'}")
    return importlib.import_module(f"vitijax.datasets.{name}.{name}_dataset_builder").Builder


def with_margin(cls, config: Any, margin: float | None):
    """``config`` (a name or a BuilderConfig of ``cls``) cropping with ``margin``: itself when the margin is
    its own, else a copy named ``<name>_margin<m>``, so that another margin is another data set (its own
    folder), never a silent reuse of crops cut with a different rule."""
    if margin is None:
        return config
    if config is None or isinstance(config, str):
        name = config or cls.BUILDER_CONFIGS[0].name
        known = {c.name: c for c in cls.BUILDER_CONFIGS}
        if name not in known:
            raise ValueError(f"{cls.name} has configs {', '.join(known)}, not {name!r}")
        config = known[name]
    if abs(float(config.crop_margin) - float(margin)) < 1e-9:
        return config.name if any(config is c for c in cls.BUILDER_CONFIGS) else config
    return dataclasses.replace(config, name=f"{config.name}_margin{float(margin):g}", crop_margin=float(margin))


def check_margin(builder, margin: float | None) -> None:
    """Refuses a built data set whose crops were cut with another margin than ``margin``."""
    stored = builder.info.metadata.get("crop_margin") if builder.info.metadata is not None else None
    if margin is not None and (stored is None or abs(float(stored) - float(margin)) > 1e-9):
        raise ValueError(f"data set {builder.name}/{builder.builder_config.name} in {builder.data_dir} was cropped "
                         f"with margin {stored}, the run asks for {margin}; build it with "
                         f"python -m launch.build_dataset --crop-margin {margin}")


def get_builder(name: str, *, data_dir: str = DEFAULT_DATA_DIR, config: Any = None, manual_dir: str | None = None,
                crop_margin: float | None = None):
    """An instance of the named builder. ``config``: a config name or a BuilderConfig object;
    ``crop_margin``: the crop rule's margin (:func:`with_margin`; None: the config's own)."""
    import tensorflow_datasets as tfds

    if not sys.stderr.isatty():  # a log file gets no progress-bar control characters
        tfds.disable_progress_bar()
    cls = builder_class(name)
    config = with_margin(cls, config, crop_margin)
    kwargs: dict[str, Any] = {"data_dir": data_dir, "file_format": "array_record"}
    if config is not None:
        kwargs["config"] = config
    builder = cls(**kwargs)
    return builder if manual_dir is None else _with_manual_dir(builder, manual_dir, tfds)


def _with_manual_dir(builder, manual_dir: str, tfds):
    prepare = builder.download_and_prepare

    def download_and_prepare(**kw):
        kw.setdefault("download_config", tfds.download.DownloadConfig(manual_dir=manual_dir))
        return prepare(**kw)

    builder.download_and_prepare = download_and_prepare
    return builder


def is_prepared(builder) -> bool:
    return builder.data_path.joinpath("dataset_info.json").exists()


def data_source(builder, split: str, *, with_photo: bool = False) -> "DecodedSource":
    """A split as a random-access source. The whole photo is left as PNG bytes unless ``with_photo``:
    the lesion and face-mask networks read only the crop, and decoding the photo would cost most
    of the input pipeline's time."""
    import tensorflow_datasets as tfds

    decoders = None if with_photo else {"photo": tfds.decode.SkipDecoding()}
    return DecodedSource(builder.as_data_source(split=split, decoders=decoders))


class DecodedSource:
    """A TFDS data source whose text fields come back as ``str`` and masks as [h, w]."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = dict(self._source[i])
        for k in ("patient", "view", "source_file", "source_sha256"):
            if isinstance(ex.get(k), bytes):
                ex[k] = ex[k].decode()
        for k in ("face_mask", "vitiligo_mask"):
            ex[k] = np.asarray(ex[k])[..., 0]
        return ex

    def __repr__(self) -> str:
        return f"DecodedSource({len(self)} examples)"
