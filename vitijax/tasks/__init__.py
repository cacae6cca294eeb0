"""What is trained and evaluated: one module per task, chosen by ``config.task``.

A task owns everything that differs between the networks vitijax trains; the
trainer (:mod:`vitijax.train`), the evaluator (:mod:`vitijax.evaluate`) and the
inference path dispatch to it, and adding a task is adding a file here. Each
task module defines:

* ``NAME``; the config keys it takes (``MODEL_KEYS``, ``LOSS_KEYS``,
  ``INPUT_KEYS``, ``AUGMENT_KEYS``: anything else is an error naming it);
* ``contract(input_cfg)``: its :class:`vitijax.contract.InputContract`;
* ``model_meta(model_cfg)`` (what identifies the model in its checkpoints)
  and ``build_model(meta)``; ``init_params(params, model_cfg)`` (pretrained
  parts);
* ``prepare(example, contract, aug=None, rng=None)``: an example as network
  input and label, ``TRAIN_KEYS`` of it for training, ``blank(contract)`` a
  padding example, ``DEVICE_KEYS`` what the eval step reads and
  ``HOST_KEYS`` what its rows need besides;
* ``loss(outputs, batch, loss_cfg)``, ``eval_step(variables, batch, *, model)``;
* ``rows(...)`` (per-example rows of an evaluation), ``summarize(rows, meta)``
  (the flat figures for logs and the details for the final report),
  ``SELECTION_KEY`` (the validation figure that picks the best model),
  ``summary_line(title, flat)`` and ``describe(meta)``; segmentation tasks also ``REPORT``
  (how ``launch.evaluate``'s report speaks of them, :data:`vitijax.report.html.LESION_REPORT`).

Optional: ``train_step`` (a step of its own, e.g. with a teacher), ``init_teacher`` and
``eval_variables`` (a teacher in the train state and what is evaluated), ``prepare_unlabelled``
(photos without labels, ``data.unlabelled_split``) and ``MODEL_TASK`` (the task the trained network
is stored as: :mod:`vitijax.tasks.lesion_semi` trains the lesion network).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Mapping

from vitijax.checkpoint import CheckpointError
from vitijax.contract import InputContract

TASKS = ("lesion", "face_mask", "face_box", "lesion_semi")


def get(name: str) -> ModuleType:
    """The task module called ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return importlib.import_module(f"vitijax.tasks.{name}")


def name_of(meta: Mapping[str, Any]) -> str:
    """The task of a stored model. Models saved before tasks (vitijax 0.2) said it by their input label."""
    if "task" in meta:
        return str(meta["task"])
    if meta.get("model") == "facebox":
        return "face_box"
    return {"vitiligo": "lesion", "face": "face_mask"}.get((meta.get("input") or {}).get("label", "vitiligo"), "?")


def require(name: str, expect: str | None, where: str) -> None:
    """Refuses (``CheckpointError`` naming ``where``) a network of task ``name`` where ``expect`` is needed."""
    if expect is not None and name != expect:
        raise CheckpointError(f"{where}: a {name.replace('_', '-')} network where the "
                              f"{expect.replace('_', '-')} network was expected")


def load(meta: Mapping[str, Any], where: str, expect: str | None = None):
    """(task module, model, input contract) of a stored model's ``meta``: the one way every consumer
    (Segmenter, FaceBoxModel, launch.evaluate, launch.export) rebuilds a network and what it consumes.
    ``expect`` refuses a model of another task, naming ``where``."""

    name = name_of(meta)
    require(name, expect, where)
    if name not in TASKS:
        raise CheckpointError(f"{where}: a model of unknown task {name!r}")
    task = get(name)
    stored = meta.get("input")
    if stored and "source" not in stored:  # saved by vitijax 0.2, before the contract: the task's own kind of input
        stored = {**task.contract({"size": stored["size"]}).to_meta(), **stored}
    contract = InputContract.from_meta(stored, where)
    classes = meta.get("num_classes")
    if name.startswith("lesion") and classes is not None and int(classes) != contract.lesion_classes:
        # the decision reads class 2 as "cannot be assessed" only in a network trained to mean it
        raise CheckpointError(f"{where}: a lesion network with {classes} classes and input.unassessable="
                              f"{contract.unassessable}; vitijax's lesion networks have 2 classes (skin, vitiligo), "
                              "or 3 with the unassessable (glare) class: fine-tune it with launch.train first")
    return task, task.build_model(meta), contract
