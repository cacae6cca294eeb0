"""Synthetic UV (Wood's-lamp-like) photographs of faces with vitiligo, with exact ground truth.

Why synthetic: users' photographs are private, yet every part of vitijax must
train, be tested and be demonstrated without them. The generator draws
*patients* (face geometry, skin tone, hair, a clinical subtype of facial
vitiligo and a treatment response) and renders each patient's *visits* in the
three views of the paper (left, front, right) at any resolution up to the
paper's 2832x4240 portrait photos.

How it renders. The head is an ellipsoid seen by an orthographic camera; a view
is a yaw rotation of it. Every pixel is traced to a point on the canonical
(unrotated) unit sphere, and everything on the face -- features, lesions,
repigmentation islands, highlights -- is a function of that point. So the
three views of one visit are views of one face: a lesion on the left cheek
shows in the left and front views, at consistent places.

What it draws, after the paper and Bae et al. (2018):
  * dark violet-blue skin, bright blue-white depigmented lesions, dark hair and
    brows, eyes, nostrils, lips, ears, a neck and clothed upper body (which the
    paper's face mask removes) on a dark background;
  * lesion patterns of the four facial subtypes: centrofacial (periorificial:
    around eyes, nose and mouth), panfacial, hairline, and mixed; borders sharp
    in places, blurred and low-contrast in others; small satellite lesions;
  * perifollicular repigmentation islands (dark dots inside lesions), which
    multiply as treatment works; specular highlights on forehead, nose and
    cheeks (the paper's main source of false positives);
  * treatment: per visit, lesions shrink (responders), stay (non-responders)
    or grow (worsening), at a per-patient rate, so the true F-Vitiligo
    trajectory is known.

Ground truth definitions (also in BUILD.md):
  * face mask: the skin of the face inside the hairline, in front of the ears
    and above the jaw line, including eyebrows, nose and lips, excluding the
    eye openings and the nostrils. Ears, neck and hair are not face.
  * vitiligo mask: depigmented skin visible inside the face mask: lesion
    pixels minus repigmentation islands, minus brow hair that covers them.
    Lesions on the neck are drawn but, like the paper's labels, not counted.
  * face box: the bounding box of the face mask, (x0, y0, x1, y1), x1/y1
    exclusive, in photo pixels.
  * ratio: F-Vitiligo = 100 * vitiligo pixels / face pixels.
  * unassessable mask: face pixels where specular reflection (glare) makes at
    least half of the pixel's light (:data:`GLARE_LEVEL`): whether the skin
    beneath is pigmented can no longer be judged. Lesions under glare stay in
    the vitiligo mask (they are there); a glare-aware analysis leaves these
    pixels out of both counts (:mod:`vitijax.pipeline`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Iterator

import numpy as np
from scipy import ndimage

VIEWS = ("left", "front", "right")
# Yaw of the head per view, radians: "left" turns the patient's left cheek to the camera.
VIEW_YAW = {"left": 0.62, "front": 0.0, "right": -0.62}
SUBTYPES = ("centrofacial", "panfacial", "hairline", "mixed")
PAPER_SIZE = (4240, 2832)  # (height, width): the paper's portrait photographs
GLARE_LEVEL = 0.5  # specular share of a pixel's light from which it is unassessable (the truth's definition)

# Canonical facial landmarks as (azimuth, elevation) on the unit sphere, radians.
# Positive azimuth is the patient's left, which appears on the image's right in the front view.
_EYE = (0.38, 0.12)
_BROW = (0.38, 0.29)
_NOSTRIL = (0.075, -0.30)
_MOUTH = (0.0, -0.52)
_FACE_AZIMUTH = 1.2  # the face ends (ears begin) this far round
_CHIN_ELEVATION = -1.22


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One depigmented patch, defined on the canonical unit sphere."""

    azimuth: float
    elevation: float
    radius: float  # angular radius at the first visit, radians
    roughness: float  # amplitude of the border's irregularity, relative to radius
    border: float  # width of the soft border, relative to radius (0.02 sharp .. 0.5 blurred)
    contrast: float  # depigmentation degree at the first visit: 1 = fully depigmented; 0.3 = faint, partial
    response: float  # multiplier of the patient's treatment rate for this lesion
    noise_seed: int
    fade: float = 0.0  # diffuse repigmentation: the degree falls by this share of its first-visit value per visit


def degree(lesion: Lesion, visit: int) -> float:
    """The lesion's depigmentation degree at ``visit``, in [0, 1]: how far its interior goes from the
    patient's normal skin (0) to fully depigmented skin (1). Pixels mix ``degree`` of the lesion colour
    into the skin."""
    return lesion.contrast * max(0.1, 1.0 - lesion.fade * visit) if lesion.fade else lesion.contrast


@dataclasses.dataclass(frozen=True)
class Patient:
    """Everything that stays the same across a patient's visits and views."""

    patient_id: str
    seed: int
    subtype: str
    rate: float  # relative lesion shrinkage per visit; 0 non-responder, < 0 worsening
    head_center: tuple[float, float]  # (x, y) as fractions of photo width and height
    head_axes: tuple[float, float, float]  # ellipsoid semi-axes (width, height, depth), fraction of photo height
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lesion_rgb: tuple[float, float, float]
    hairline: float  # elevation of the hairline at the midline
    clothing: tuple[float, float, float]
    islands: float  # density of repigmentation islands at the first visit
    lesions: tuple[Lesion, ...]
    highlight: float  # specular highlight strength
    neck_lesion: bool


@dataclasses.dataclass
class SyntheticImage:
    """One rendered photograph and its exact ground truth.

    image: [h, w, 3] uint8 RGB. face_mask, vitiligo_mask, unassessable_mask: [h, w] uint8 {0, 1}.
    face_box: (x0, y0, x1, y1) photo pixels, exclusive ends. ratio: percent (the whole face, glare or
    not). glare: the photo's glare gain (1 = the patient's own highlights, :class:`Acquisition`).
    shot: which repeat shot of the visit (0: the first). pose: where the head is (:func:`project` maps
    canonical face points to this photo's pixels with it, :func:`surface` pixels to points).
    lesion_ids: which generator lesion each vitiligo pixel belongs to (0 elsewhere; where lesions overlap,
    the one that shows most), the identity that lesion tracking is scored against; its degree at this
    visit is ``degree(patient.lesions[id - 1], visit)``.
    """

    image: np.ndarray
    face_mask: np.ndarray
    vitiligo_mask: np.ndarray
    face_box: tuple[int, int, int, int]
    ratio: float
    patient_id: str
    visit: int
    view: str
    subtype: str
    unassessable_mask: np.ndarray | None = None
    glare: float = 1.0
    shot: int = 0
    pose: Pose | None = None
    lesion_ids: np.ndarray | None = None  # [h, w] uint16: 1 + the index in Patient.lesions of each vitiligo pixel's lesion


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a stable hash of ``keys`` (independent of Python's hash salt)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _direction(azimuth, elevation):
    return np.stack([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                     np.cos(elevation) * np.cos(azimuth)], axis=-1)


def make_patient(seed: int, index: int, subtype: str | None = None, diffuse: bool = False) -> Patient:
    """Draws patient ``index`` of data set ``seed``; the same arguments give the same patient.

    ``diffuse``: lesions of a responder may also repigment diffusely (each with probability 0.5, its
    degree falls linearly by 5-25 % of its first-visit value per visit, to no less than a tenth of it), drawn from a stream of its own so that every
    other draw, and every bundled data set (drawn without), stays as it was."""
    r = _rng("patient", seed, index)
    subtype = subtype or SUBTYPES[int(r.integers(len(SUBTYPES)))]
    kind = r.choice(["responder", "responder", "non-responder", "worsening"], p=[0.4, 0.25, 0.2, 0.15])
    rate = {"responder": r.uniform(0.12, 0.3), "non-responder": r.uniform(-0.02, 0.02),
            "worsening": r.uniform(-0.15, -0.05)}[str(kind)]
    tone = r.uniform(0.75, 1.25)
    skin = tuple(float(c) for c in np.array([62, 48, 112]) * tone * r.uniform(0.92, 1.08, 3))
    lesion_rgb = tuple(float(c) for c in np.array([170, 182, 240]) * r.uniform(0.9, 1.05, 3))
    hair = tuple(float(c) for c in np.array([22, 18, 38]) * r.uniform(0.7, 1.6))
    clothing = tuple(float(c) for c in r.choice([[35, 32, 70], [150, 160, 230], [60, 40, 90], [20, 20, 30]]) *
                     r.uniform(0.8, 1.1))
    hairline = r.uniform(0.62, 0.85)
    lesions = _draw_lesions(r, subtype, hairline)
    if diffuse and rate > 0.05:
        rd = _rng("diffuse", seed, index)
        lesions = tuple(dataclasses.replace(les, fade=float(rd.uniform(0.05, 0.25)) if rd.random() < 0.5 else 0.0)
                        for les in lesions)
    return Patient(
        patient_id=f"P{index:03d}", seed=seed, subtype=subtype, rate=float(rate),
        head_center=(r.uniform(0.45, 0.55), r.uniform(0.36, 0.44)),
        head_axes=(r.uniform(0.15, 0.18), r.uniform(0.2, 0.23), r.uniform(0.17, 0.2)),
        skin=skin, hair=hair, lesion_rgb=lesion_rgb, hairline=float(hairline), clothing=clothing,
        islands=float(r.uniform(0.0, 0.15)), lesions=lesions, highlight=float(r.uniform(0.3, 1.0)),
        neck_lesion=bool(r.random() < 0.3))


def _draw_lesions(r: np.random.Generator, subtype: str, hairline: float) -> tuple[Lesion, ...]:
    """Lesion centres and sizes after the subtype's distribution on the face."""
    centres: list[tuple[float, float, float]] = []  # (azimuth, elevation, radius)

    def around(az, el, spread, n, rad):
        for _ in range(n):
            a = r.uniform(0, 2 * np.pi)
            d = spread * np.sqrt(r.uniform(0.3, 1.0))
            centres.append((az + d * np.cos(a), el + d * np.sin(a), r.uniform(*rad)))

    kinds = [subtype] if subtype != "mixed" else list(r.choice(["centrofacial", "panfacial", "hairline"], 2,
                                                                 replace=False))
    for kind in kinds:
        if kind == "centrofacial":  # periorificial: eyes, mouth, nose
            for site in r.permutation([(_EYE[0], _EYE[1]), (-_EYE[0], _EYE[1]), _MOUTH, (0.0, -0.25)])[
                    : int(r.integers(2, 5))]:
                around(site[0], site[1], 0.1, int(r.integers(1, 3)), (0.07, 0.16))
        elif kind == "panfacial":
            for _ in range(int(r.integers(3, 7))):
                centres.append((r.uniform(-0.9, 0.9), r.uniform(-1.0, 0.6), r.uniform(0.15, 0.38)))
        elif kind == "hairline":
            for az in np.linspace(-1.0, 1.0, int(r.integers(3, 6))) + r.uniform(-0.15, 0.15):
                el = hairline - 0.3 * (az / _FACE_AZIMUTH) ** 2 - r.uniform(0.02, 0.12)
                centres.append((az, el, r.uniform(0.08, 0.2)))
    # Satellites: small lesions near the big ones.
    for az, el, rad in list(centres):
        for _ in range(int(r.poisson(0.8))):
            a = r.uniform(0, 2 * np.pi)
            d = rad * r.uniform(1.2, 2.0)
            centres.append((az + d * np.cos(a), el + d * np.sin(a), r.uniform(0.02, 0.05)))
    lesions = []
    for az, el, rad in centres:
        sharp = r.random() < 0.5
        lesions.append(Lesion(
            azimuth=float(az), elevation=float(el), radius=float(rad), roughness=float(r.uniform(0.1, 0.35)),
            border=float(r.uniform(0.02, 0.08) if sharp else r.uniform(0.2, 0.5)),
            contrast=float(r.uniform(0.75, 1.0) if r.random() < 0.75 else r.uniform(0.3, 0.55)),
            response=float(r.uniform(0.6, 1.4)), noise_seed=int(r.integers(2**31))))
    return tuple(lesions)


def _fourier_noise(q: np.ndarray, seed: int, n: int = 8, freq: float = 6.0) -> np.ndarray:
    """Smooth noise in [-1, 1] on 3-D points q [..., 3]: a sum of random plane waves."""
    r = np.random.default_rng(seed)
    w = r.normal(0, freq, (n, 3)).astype(np.float32)
    phase = r.uniform(0, 2 * np.pi, n).astype(np.float32)
    return np.sin(q @ w.T + phase).sum(-1) / np.sqrt(n / 2) / 2


def _hash01(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer cell (i, j): a small integer hash."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float32) / float(0x1000000)


def _ellipse(az, el, centre, half_widths):
    return ((az - centre[0]) / half_widths[0]) ** 2 + ((el - centre[1]) / half_widths[1]) ** 2


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """How far a photo's exposure, focus, sensor noise and lamp tone may stray, drawn per photo.

    ``STANDARD`` (None in :func:`render`) is the controlled photography of the
    bundled data sets. :data:`VARIED` is a clinic on a bad day: from half to
    1.6 times the exposure, up to five times the blur, up to 15 grey levels of
    noise and a +-15 % lamp tone per channel; photos where the chain errs, on
    which the "needs review" decision is calibrated and tested.
    """

    exposure: tuple[float, float] = (0.85, 1.15)
    blur: tuple[float, float] = (1.0, 1.0)  # times the standard optical blur
    noise: tuple[float, float] = (2.0, 5.0)  # standard deviation of the sensor noise, grey levels
    tone: float = 0.0  # per-channel gain, +-
    glare: tuple[float, float] = (1.0, 1.0)  # gain on the patient's specular highlights (0: none; 3: strong)
    yaw: tuple[float, float] = (0.0, 0.0)  # head turned this much off the view's yaw, radians
    pitch: tuple[float, float] = (0.0, 0.0)  # head nodded, radians (positive: chin up)
    roll: tuple[float, float] = (0.0, 0.0)  # head tilted in the image plane, radians
    distance: tuple[float, float] = (1.0, 1.0)  # camera distance, times the standard (1.15: the face 13 % smaller)
    shift: float = 0.0  # framing: the head moved up to this fraction of the photo height, each axis


VARIED = Acquisition(exposure=(0.5, 1.6), blur=(1.0, 5.0), noise=(2.0, 15.0), tone=0.15)
# Re-photographing a patient on another day: head turned, nodded and tilted by up to about 10 degrees,
# the camera 15 % nearer or farther, the framing moved, the exposure and lamp tone of the day.
FOLLOW_UP = Acquisition(exposure=(0.85, 1.15), tone=0.05, yaw=(-0.17, 0.17), pitch=(-0.17, 0.17),
                        roll=(-0.17, 0.17), distance=(0.87, 1.15), shift=0.03)
# Glare from none to strong: the gain brightens and spreads the highlights (forehead, nose, cheeks; over
# skin and lesions alike) and, with exposure, saturates them.
GLARE = Acquisition(glare=(0.0, 3.0))


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the head is in one photo: the truth that maps a point of the face to a pixel.

    ``yaw`` is the total head turn (the view's and the photo's own, radians), ``pitch`` and ``roll``
    the nod and tilt; ``distance`` the camera distance relative to the standard (the face's size in
    the photo is 1 / distance of the standard); ``shift`` (dx, dy) the head's displacement as
    fractions of the photo height.
    """

    yaw: float
    pitch: float = 0.0
    roll: float = 0.0
    distance: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def rotation(self) -> np.ndarray:
        """[3, 3] camera -> head coordinates (head = M @ camera): the yaw turn, then the nod, then the tilt."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        nod = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        tilt = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return turn @ nod @ tilt


def photo_pose(patient: Patient, visit: int, view: str, acquisition: Acquisition | None = None,
               shot: int = 0) -> Pose:
    """The head's pose in photo (``visit``, ``view``, ``shot``) of ``patient``, as :func:`render` draws it."""
    if view not in VIEW_YAW:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if acquisition is None:
        return Pose(VIEW_YAW[view])
    a = acquisition
    # Glare gain and head turn keep their own draws (the glare data sets'); a repeat shot draws anew.
    rg = _rng("glare", patient.seed, patient.patient_id, visit, view, *([shot] if shot else []))
    rg.uniform(*a.glare)
    yaw = float(rg.uniform(*a.yaw))
    rp = _rng("pose", patient.seed, patient.patient_id, visit, view, shot)
    return Pose(VIEW_YAW[view] + yaw, float(rp.uniform(*a.pitch)), float(rp.uniform(*a.roll)),
                float(rp.uniform(*a.distance)), (float(rp.uniform(-a.shift, a.shift)),
                                                 float(rp.uniform(-a.shift, a.shift))))


def project(patient: Patient, pose: Pose, size: tuple[int, int], azimuth: np.ndarray,
            elevation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of canonical face points in a photo: the exact inverse of :func:`render`'s ray trace.

    ``azimuth``, ``elevation`` [...] radians on the canonical head (as :func:`surface` returns them);
    ``size`` (height, width) of the photo. Returns (x, y, facing): photo pixels (centres at integers)
    and whether the point faces the camera (it may still be hidden by nothing else: the head is convex).
    """
    h, w = size
    A, B, C = patient.head_axes
    u = _direction(np.asarray(azimuth, np.float64), np.asarray(elevation, np.float64))
    head = u * np.array([A, B, C])
    m = pose.rotation()
    cam = head @ m  # camera = M^T head, row-wise
    normal = (head / np.array([A, B, C]) ** 2) @ m
    x = cam[..., 0] * h / pose.distance + (patient.head_center[0] * w + pose.shift[0] * h) - 0.5
    y = -cam[..., 1] * h / pose.distance + (patient.head_center[1] * h + pose.shift[1] * h) - 0.5
    return x, y, normal[..., 2] > 0


def surface(patient: Patient, pose: Pose, size: tuple[int, int], x: np.ndarray,
            y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The canonical face point each photo pixel (``x``, ``y`` [...], centres at integers) shows:
    (azimuth, elevation, on_head), the ray trace of :func:`render`."""
    q, _, on_head, _, _ = _trace(patient, pose, size, np.asarray(x, np.float32), np.asarray(y, np.float32))
    return np.arctan2(q[..., 0], q[..., 2]), np.arcsin(np.clip(q[..., 1], -1, 1)), on_head


def correspondence(patient: Patient, pose_a: Pose, size_a: tuple[int, int], pose_b: Pose, size_b: tuple[int, int],
                   x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true correspondence between two photos of one patient: for pixels (``x``, ``y``) of photo a,
    the pixels (x, y) of photo b that show the same point of the head, and whether photo b sees it
    (the point is on the head in a and faces the camera in b)."""
    az, el, on_head = surface(patient, pose_a, size_a, x, y)
    xb, yb, facing = project(patient, pose_b, size_b, az, el)
    return xb, yb, on_head & facing


def _trace(p: Patient, pose: Pose, size, xx: np.ndarray, yy: np.ndarray):
    """Camera rays through pixels (``xx``, ``yy``) against the head: (q [..., 3] the canonical unit-sphere
    point, n [..., 3] the camera-space surface normal, on_head [...]), plus the camera coordinates X, Y."""
    h, w = size
    A, B, C = p.head_axes
    if pose.pitch == 0 and pose.roll == 0 and pose.distance == 1 and pose.shift == (0.0, 0.0):
        # The yaw-only camera of every bundled data set, written out so that its pixels stay bit for bit.
        X = (xx + 0.5 - p.head_center[0] * w) / h
        Y = -(yy + 0.5 - p.head_center[1] * h) / h
        t = pose.yaw
        ct, st = math.cos(t), math.sin(t)
        # Ray (X, Y, Z) against the ellipsoid rotated by yaw t; take the root nearest the camera (+Z).
        qa = st**2 / A**2 + ct**2 / C**2
        qb = 2 * X * ct * st * (1 / A**2 - 1 / C**2)
        qc = X**2 * (ct**2 / A**2 + st**2 / C**2) + Y**2 / B**2 - 1
        disc = qb**2 - 4 * qa * qc
        Z = (-qb + np.sqrt(np.maximum(disc, 0))) / (2 * qa)
        Qx, Qy, Qz = ct * X + st * Z, Y, -st * X + ct * Z
        n = np.stack([Qx / A**2, Qy / B**2, Qz / C**2], -1)
        n = np.stack([ct * n[..., 0] - st * n[..., 2], n[..., 1], st * n[..., 0] + ct * n[..., 2]], -1)
    else:
        X = ((xx + 0.5 - p.head_center[0] * w - pose.shift[0] * h) / h * pose.distance).astype(np.float32)
        Y = (-(yy + 0.5 - p.head_center[1] * h - pose.shift[1] * h) / h * pose.distance).astype(np.float32)
        m = pose.rotation().astype(np.float32)
        d = np.array([1 / A**2, 1 / B**2, 1 / C**2], np.float32)
        # head = M (X, Y, 0) + Z M e_z; (head)^T D (head) = 1 is a quadratic in Z.
        o = np.stack([X, Y, np.zeros_like(X)], -1) @ m.T
        e = m[:, 2]
        qa = float(e @ (d * e))
        qb = 2 * (o @ (d * e))
        qc = (o * o) @ d - 1
        disc = qb**2 - 4 * qa * qc
        Z = (-qb + np.sqrt(np.maximum(disc, 0))) / (2 * qa)
        Q = o + Z[..., None] * e
        Qx, Qy, Qz = Q[..., 0], Q[..., 1], Q[..., 2]
        n = (Q * d) @ m  # camera = M^T head, row-wise
    on_head = disc > 0
    q = np.stack([Qx / A, Qy / B, Qz / C], -1).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True) + 1e-9
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
    return q, n, on_head, X, Y


def render(patient: Patient, visit: int, view: str, size: tuple[int, int] = (384, 256),
           acquisition: Acquisition | None = None, shot: int = 0) -> SyntheticImage:
    """Renders one photograph of ``patient`` at ``visit`` (0 = baseline) in ``view``.

    ``size`` is (height, width) in pixels; portrait like the paper's camera
    (4240, 2832) by default aspect. Rendering is done in bands of rows, so
    memory stays bounded at full resolution. ``acquisition``: how the camera
    strays from photo to photo (None: the standard, as every bundled data set).
    The masks do not depend on it.
    """
    if view not in VIEW_YAW:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    h, w = size
    image = np.empty((h, w, 3), np.float32)
    face = np.empty((h, w), np.uint8)
    vitiligo = np.empty((h, w), np.uint8)
    glare_px = np.empty((h, w), np.uint8)
    ids = np.empty((h, w), np.uint16)
    # Glare gain and pose have their own draws, so the camera draws of every bundled data set stay.
    # A repeat shot (shot > 0) of the same visit draws its own pose, glare and camera.
    shot_key = [shot] if shot else []
    gain = 1.0
    if acquisition is not None:
        gain_rng = _rng("glare", patient.seed, patient.patient_id, visit, view, *shot_key)
        gain = float(gain_rng.uniform(*acquisition.glare))
    pose = photo_pose(patient, visit, view, acquisition, shot)
    band = max(1, (1 << 20) // w)
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        image[y0:y1], face[y0:y1], vitiligo[y0:y1], glare_px[y0:y1], ids[y0:y1] = _render_rows(
            patient, visit, view, size, y0, y1, glare=gain, pose=pose)
    # Optics and sensor: a little blur (scaled to resolution), exposure and noise.
    r = _rng("camera", patient.seed, patient.patient_id, visit, view, *shot_key)
    sigma = max(0.5, 0.0012 * h)
    if acquisition is None:  # the draws of every bundled data set, unchanged
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest")
        image *= r.uniform(0.85, 1.15)
        image += r.normal(0, r.uniform(2.0, 5.0), image.shape).astype(np.float32)
    else:
        a = acquisition
        sigma *= r.uniform(*a.blur)
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest")
        image *= (r.uniform(*a.exposure) * (1 + r.uniform(-a.tone, a.tone, 3))).astype(np.float32)
        image += r.normal(0, r.uniform(*a.noise), image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(face)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    n_face = int(face.sum())
    ratio = 100.0 * float(vitiligo.sum()) / n_face if n_face else float("nan")
    return SyntheticImage(image, face, vitiligo, box, ratio, patient.patient_id, visit, view, patient.subtype,
                          unassessable_mask=glare_px & face, glare=gain, shot=shot, pose=pose, lesion_ids=ids)


def _render_rows(p: Patient, visit: int, view: str, size, y0: int, y1: int, glare: float = 1.0,
                 pose: Pose | None = None):
    h, w = size
    pose = pose or Pose(VIEW_YAW[view])
    yy, xx = np.mgrid[y0:y1, 0:w].astype(np.float32)
    # q: the canonical point each pixel shows; n: the camera-space surface normal (shading, highlights);
    # X, Y: normalised camera coordinates (units of photo height, y up).
    q, n, on_head, X, Y = _trace(p, pose, size, xx, yy)
    A, B, C = p.head_axes
    st = math.sin(pose.yaw)
    az = np.arctan2(q[..., 0], q[..., 2])
    el = np.arcsin(np.clip(q[..., 1], -1, 1))
    facing = np.clip(n[..., 2], 0, 1)

    rc = _rng("scene", p.seed, p.patient_id)
    skin = np.asarray(p.skin, np.float32)
    img = np.empty((*X.shape, 3), np.float32)
    # Background: dark, with a soft vignette; clothing and neck below the head.
    bg = np.asarray([14, 10, 30], np.float32) * (1.2 - 0.5 * np.sqrt(X**2 + (Y + 0.1) ** 2))[..., None]
    img[:] = bg
    neck_half = A * 0.55
    neck = (np.abs(X - 0.12 * st * A) < neck_half) & (Y < -B * 0.55) & (Y > -B * 1.9)
    shoulder = Y < -B * 1.5 - 0.35 * np.maximum(np.abs(X) - neck_half, 0)  # shoulders slope down from the neck
    img[neck] = skin * 0.75 * (0.7 + 0.3 * np.cos(np.clip(X[neck] / neck_half, -1, 1) * 1.2))[..., None]
    clothes = shoulder & ~(neck & (Y > -B * 1.7))
    img[clothes] = np.asarray(p.clothing, np.float32) * (0.8 + 0.2 * _fourier_noise(
        np.stack([X, Y, X * 0], -1)[clothes], rc.integers(2**31), 6, 20.0))[..., None]
    if p.neck_lesion:  # drawn, but not facial vitiligo: not in the label
        nl = neck & (((X - 0.3 * neck_half) / (0.5 * neck_half)) ** 2 + ((Y + B * 1.1) / (0.15 * B)) ** 2 < 1)
        img[nl] = 0.5 * img[nl] + 0.5 * np.asarray(p.lesion_rgb, np.float32)

    # Head: hair everywhere except face and ears; skin on face and ears.
    hairline = p.hairline - 0.3 * (az / _FACE_AZIMUTH) ** 2 + 0.03 * _fourier_noise(q, p.seed + 1, 6, 4.0)
    ear = _ellipse(np.abs(az), el, (1.55, 0.0), (0.22, 0.22)) < 1
    face_region = on_head & (np.abs(az) < _FACE_AZIMUTH) & (el < hairline) & (el > _CHIN_ELEVATION)
    eyes = (_ellipse(np.abs(az), el, _EYE, (0.15, 0.055)) < 1) & face_region
    nostrils = (_ellipse(np.abs(az), el, _NOSTRIL, (0.035, 0.02)) < 1) & face_region
    brow_curve = _BROW[1] + 0.05 * (1 - ((np.abs(az) - _BROW[0]) / 0.2) ** 2)
    brows = (np.abs(el - brow_curve) < 0.025) & (np.abs(np.abs(az) - _BROW[0]) < 0.2) & face_region
    lips = (_ellipse(az, el, _MOUTH, (0.2, 0.06)) < 1) & face_region
    face = face_region & ~eyes & ~nostrils

    shade = (0.45 + 0.55 * facing**0.7)[..., None]
    tex = 1 + 0.06 * _fourier_noise(q, p.seed + 2, 12, 30.0)[..., None]
    head_skin = skin * shade * tex
    img[on_head] = (np.asarray(p.hair, np.float32) * shade * (1 + 0.25 * _fourier_noise(
        q * np.asarray([1, 8, 1], np.float32), p.seed + 3, 8, 25.0))[..., None])[on_head]
    skin_px = (face_region | (ear & on_head))
    img[skin_px] = head_skin[skin_px]
    img[lips] = (head_skin * np.asarray([0.75, 0.55, 0.7], np.float32))[lips]

    # Lesions and repigmentation islands (in canonical coordinates, so consistent across views).
    alpha = np.zeros(X.shape, np.float32)
    strength = np.zeros(X.shape, np.float32)
    label = np.zeros(X.shape, bool)
    owner = np.zeros(X.shape, np.uint16)  # which lesion each labelled pixel belongs to (1 + index)
    shown = np.zeros(X.shape, np.float32)
    for index, les in enumerate(p.lesions):
        scale = max(0.0, 1.0 - p.rate * les.response * visit)
        radius = les.radius * scale
        if radius < 0.01:
            continue
        d = np.arccos(np.clip(q @ _direction(les.azimuth, les.elevation).astype(np.float32), -1, 1))
        near = on_head & (d < radius * (1.6 + les.roughness + les.border))
        if not near.any():
            continue
        sd = np.zeros(X.shape, np.float32)
        sd[near] = (radius * (1 + les.roughness * _fourier_noise(q[near], les.noise_seed, 8, 5.0 / max(radius, .05)))
                    - d[near]) / radius
        a = np.clip(0.5 + sd / les.border, 0, 1) * near
        deg = degree(les, visit)
        take = a * deg > alpha * strength
        alpha = np.where(take, a, alpha)
        strength = np.where(take, deg, strength)
        inside = near & (sd > 0)
        label |= inside
        mine = inside & (a * deg > shown)
        owner[mine] = index + 1
        shown = np.where(mine, a * deg, shown)
    density = float(np.clip(p.islands + max(p.rate, 0) * 0.35 * visit, 0, 0.7))
    cell = 0.045
    ci, cj = np.floor(az / cell), np.floor(el / cell)
    jit_i, jit_j = _hash01(ci, cj, p.seed + 11), _hash01(ci, cj, p.seed + 12)
    dots = np.hypot(az - (ci + 0.25 + 0.5 * jit_i) * cell, el - (cj + 0.25 + 0.5 * jit_j) * cell)
    island = (_hash01(ci, cj, p.seed + 13) < density) & (dots < cell * (0.18 + 0.25 * density))
    alpha = np.where(island, alpha * 0.15, alpha)
    label &= ~island
    lesion_px = skin_px | (face_region & brows)
    mix = (alpha * strength)[..., None] * lesion_px[..., None]
    img = img * (1 - mix) + np.asarray(p.lesion_rgb, np.float32) * shade * (0.9 + 0.1 * tex) * mix
    # Hair, eyes and nostrils are drawn over the skin.
    img[brows] = np.asarray(p.hair, np.float32) * 1.2
    img[eyes] = np.where((_ellipse(np.abs(az), el, _EYE, (0.05, 0.05)) < 1)[..., None], [25, 20, 45],
                         [110, 115, 170])[eyes] * shade[eyes]
    img[nostrils] = np.asarray([12, 8, 22], np.float32)
    mouth = (np.abs(el - _MOUTH[1]) < 0.008) & (np.abs(az) < 0.17) & face_region
    img[mouth] = img[mouth] * 0.4
    # Specular highlights: forehead, nose tip, cheeks; view-dependent through the normal.
    # A glare gain above 1 also spreads each spot (an oily face under a close lamp), 2.2 times wider at 3.
    spec = np.zeros(X.shape, np.float32)
    spread = 1.0 + 0.6 * max(glare - 1.0, 0.0)
    for (sa, se), sz in (((0.0, 0.45), 0.12), ((0.0, -0.2), 0.06), ((0.45, -0.12), 0.09), ((-0.45, -0.12), 0.09)):
        jitter = rc.normal(0, 0.03, 2)
        sz *= spread
        spec += rc.uniform(0.3, 1.0) * np.exp(-_ellipse(az, el, (sa + jitter[0], se + jitter[1]), (sz, sz * 0.7)))
    spec *= p.highlight * facing**6 * on_head
    spec = np.clip(spec * glare, 0, 0.95)  # x 1.0 is exact: the standard photos are unchanged
    img = img + (np.asarray([235, 238, 255], np.float32) - img) * spec[..., None]

    vitiligo = label & face & ~brows
    return (img, face.astype(np.uint8), vitiligo.astype(np.uint8), (spec >= GLARE_LEVEL).astype(np.uint8),
            np.where(vitiligo, owner, 0).astype(np.uint16))


def generate(seed: int, num_patients: int, visits: int = 3, size: tuple[int, int] = (384, 256),
             views: tuple[str, ...] = VIEWS, acquisition: Acquisition | None = None) -> Iterator[SyntheticImage]:
    """Every (patient, visit, view) of a synthetic data set, in that order."""
    for index in range(num_patients):
        patient = make_patient(seed, index)
        for visit in range(visits):
            for view in views:
                yield render(patient, visit, view, size, acquisition)
