"""Registration of a follow-up photo to the same view of the patient's baseline.

Two photos of one face weeks apart differ in head turn, tilt, distance and
framing; subtracting their F-Vitiligo ratios then mixes those differences with
the disease's. This module finds, for every baseline pixel, the follow-up pixel
that shows the same point of the skin, so that change is measured on the
region both photos see, in baseline coordinates.

How (OpenCV, at a working resolution where the baseline face's larger side is
:data:`WORK_FACE_PX` pixels, or the photo's own when the face is smaller):

1. **Start** from the two face masks: the affine map that takes the baseline
   mask's centroid and second moments onto the follow-up's (translation,
   scale, shear; it does not look for the head's tilt, which the next step
   finds).
2. **Refine** the affine map by ECC (``cv2.findTransformECCWithMask``, the
   enhanced correlation coefficient of Evangelidis and Psarakis 2008) on the
   grey-level photos, coarse to fine (at the coarsest level from several
   starts, the first map turned by each of :data:`START_TILTS`: a single start
   was trapped at a correlation near 0.4 on 9 of 48 full-resolution follow-up
   pairs), over the face with its holes filled (the
   eyes, nostrils and brows are the sharpest landmarks a UV photo has) and the
   lesions of both photos left out: lesions are what changes between visits,
   and aligning on them would hide their change.
3. **Dense residual**: DIS optical flow (``cv2.DISOpticalFlow``) between the
   baseline and the affinely aligned follow-up, each photo's lesions filled
   with its surrounding skin, trusted on the skin outside both photos'
   lesions, smoothed strongly, and carried into the lesions as a membrane
   (the harmonic interpolation of the flow around them): a head turned a few
   degrees differently is not an affine map of the image (the near cheek
   widens, the far one narrows), and the flow takes up that smooth remainder.

Quality: the ECC coefficient and the overlap (IoU) of the follow-up face mask,
warped, with the baseline's. A registration below :data:`MIN_ECC` or
:data:`MIN_FACE_IOU` is flagged, not trusted.

Coordinates are (x, y) photo pixels, x to the right, y down, pixel centres at
integers (OpenCV's convention).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from scipy import ndimage

WORK_FACE_PX = 384  # the baseline face's larger side at the working resolution, pixels (at most)
MIN_ECC = 0.6  # below: the photos do not correlate on the skin: flagged
MIN_FACE_IOU = 0.85  # below: the warped follow-up face covers the baseline face poorly: flagged
START_TILTS = (0.0, -8.0, 8.0, -16.0, 16.0)  # degrees: the ECC starts at the coarsest level
FLOW_SMOOTH = 0.04  # sigma of the flow's smoothing, times WORK_FACE_PX working pixels
FLOW_SMOOTH_COARSE = 0.15  # the same, inside lesions too large for the fine scale to reach across


@dataclasses.dataclass
class Registration:
    """Where each baseline pixel is in the follow-up photo.

    ``affine`` [2, 3] maps baseline (x, y, 1) to follow-up (x, y), full-resolution pixels; ``flow``
    [hw, ww, 2] is the dense residual, added after the affine map, in follow-up photo pixels, sampled
    on the baseline's working grid (None when not computed); ``scale`` is working pixels per photo
    pixel.
    ``ecc`` is the final correlation coefficient on the common skin, ``face_iou`` the overlap of the
    warped follow-up face with the baseline face, ``ok`` False with a ``reason`` when either is too low
    or a stage failed.
    """

    affine: np.ndarray
    flow: np.ndarray | None
    scale: float
    baseline_shape: tuple[int, int]
    followup_shape: tuple[int, int]
    ecc: float
    face_iou: float
    ok: bool
    reason: str = ""

    def to_followup(self, xy: np.ndarray) -> np.ndarray:
        """Baseline points ``xy`` [n, 2] (photo pixels) -> the follow-up pixels that show them, [n, 2]."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = xy @ self.affine[:, :2].T + self.affine[:, 2]
        if self.flow is not None:
            d = _scaling(self.baseline_shape, self.flow.shape[:2])
            wx, wy = d[0, 0] * xy[:, 0] + d[0, 2], d[1, 1] * xy[:, 1] + d[1, 2]  # working-resolution pixels
            fx = ndimage.map_coordinates(self.flow[..., 0], [wy, wx], order=1, mode="nearest")
            fy = ndimage.map_coordinates(self.flow[..., 1], [wy, wx], order=1, mode="nearest")
            out = out + np.stack([fx, fy], -1)
        return out

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) [h, w] float32 over the baseline photo: the follow-up pixel each baseline pixel
        shows, for ``cv2.remap``."""
        h, w = self.baseline_shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        a = self.affine.astype(np.float32)
        mx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
        my = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
        if self.flow is not None:
            up = cv2.resize(self.flow, (w, h), interpolation=cv2.INTER_LINEAR)
            mx, my = mx + up[..., 0], my + up[..., 1]
        return mx, my

    def warp(self, followup: np.ndarray, nearest: bool = False,
             maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``followup`` [h', w'(, c)] (photo, mask or map of the follow-up photo) resampled onto the
        baseline's pixel grid, [h, w(, c)]; outside the follow-up photo: 0. ``nearest`` for masks.
        ``maps``: :meth:`maps` computed once for several warps (12M-pixel photos)."""
        mx, my = maps if maps is not None else self.maps()
        return cv2.remap(followup, mx, my, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _grey(image: np.ndarray, scale: float) -> np.ndarray:
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)


def _mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def _moments_affine(base: np.ndarray, follow: np.ndarray) -> np.ndarray:
    """[2, 3] affine taking the baseline mask's centroid and covariance onto the follow-up mask's."""
    def stats(m):
        ys, xs = np.nonzero(m)
        pts = np.stack([xs, ys], -1).astype(np.float64)
        return pts.mean(0), np.cov(pts.T)

    cb, cov_b = stats(base)
    cf, cov_f = stats(follow)

    def sqrtm(s, power):
        vals, vecs = np.linalg.eigh(s)
        return (vecs * vals ** power) @ vecs.T

    lin = sqrtm(cov_f, 0.5) @ sqrtm(cov_b, -0.5)
    return np.concatenate([lin, (cf - lin @ cb)[:, None]], 1)


def _normalised_blur(values: np.ndarray, weight: np.ndarray, sigma: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised convolution: the Gaussian-weighted mean of ``values`` [h, w] or [h, w, k] over the pixels
    that ``weight`` [h, w] float32 trusts, and the blurred weight (the support) [h, w]."""
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    planes = values[..., None] if values.ndim == 2 else values
    num = np.stack([cv2.GaussianBlur(planes[..., i] * weight, (0, 0), sigma) for i in range(planes.shape[-1])], -1)
    mean = num / np.maximum(den, eps)[..., None]
    return (mean[..., 0] if values.ndim == 2 else mean), den


def _harmonic_fill(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``values`` [h, w, k] with the ``hole`` pixels [h, w] replaced by the harmonic (membrane) interpolation
    of the values around them: the solution of Laplace's equation inside the hole with the surrounding
    values as its boundary. Exact for a field that is linear across the hole; smooth for any other."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    h, w = hole.shape
    inner = hole.copy()
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False  # the border keeps its values
    ys, xs = np.nonzero(inner)
    n = len(ys)
    if not n:
        return values
    index = -np.ones((h, w), np.int64)
    index[ys, xs] = np.arange(n)
    rows, cols, data = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    rhs = np.zeros((n, values.shape[-1]))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        j = index[ny, nx]
        unknown = j >= 0
        rows.append(np.nonzero(unknown)[0])
        cols.append(j[unknown])
        data.append(-np.ones(unknown.sum()))
        rhs[~unknown] += values[ny[~unknown], nx[~unknown]]
    a = coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    out = values.copy()
    out[ys, xs] = splu(a).solve(rhs)
    return out


def _fill_lesions(grey: np.ndarray, lesions: np.ndarray, sigma: float) -> np.ndarray:
    """``grey`` with lesion pixels replaced by the blurred surrounding non-lesion grey (normalised
    convolution), so that flow sees skin where the disease changed."""
    filled, _ = _normalised_blur(grey, (~lesions).astype(np.float32), sigma, 1e-3)
    return np.where(lesions, filled, grey).astype(np.float32)


def register(baseline: np.ndarray, baseline_face: np.ndarray, followup: np.ndarray, followup_face: np.ndarray,
             baseline_lesions: np.ndarray | None = None, followup_lesions: np.ndarray | None = None,
             dense: bool = True) -> Registration:
    """Registers ``followup`` [h', w', 3] uint8 to ``baseline`` [h, w, 3] uint8.

    ``*_face`` [., .] {0, 1}: the face masks (from the face-mask network or the truth);
    ``*_lesions``: the lesion masks, left out of the alignment (None: none). ``dense``: add the smoothed
    DIS flow after the affine map. Never raises on photos that do not align: the result is flagged.
    """
    if not baseline_face.any() or not followup_face.any():
        return Registration(np.eye(2, 3), None, 1.0, baseline.shape[:2], followup.shape[:2], float("nan"),
                            float("nan"), False, "empty face mask")
    ys, xs = np.nonzero(baseline_face)
    scale = min(1.0, WORK_FACE_PX / max(np.ptp(ys) + 1, np.ptp(xs) + 1))
    gb, gf = _grey(baseline, scale), _grey(followup, scale)
    fb, ff = _mask(baseline_face, gb.shape), _mask(followup_face, gf.shape)
    lb = _mask(baseline_lesions, gb.shape) if baseline_lesions is not None else np.zeros_like(fb)
    lf = _mask(followup_lesions, gf.shape) if followup_lesions is not None else np.zeros_like(ff)
    # The face with its holes (eyes, nostrils) filled, a little beyond its outline, lesions left out.
    grow = np.ones((5, 5), bool)
    face_b = ndimage.binary_fill_holes(fb)
    valid_b = ndimage.binary_dilation(face_b, grow, 2) & ~ndimage.binary_dilation(lb, grow)
    valid_f = ndimage.binary_dilation(ndimage.binary_fill_holes(ff), grow, 2) & ~ndimage.binary_dilation(lf, grow)
    d_base, d_follow = _scaling(baseline.shape[:2], gb.shape), _scaling(followup.shape[:2], gf.shape)

    def to_full(w):  # working-resolution affine -> photo pixels
        return _compose(np.linalg.inv(d_follow), w, d_base)

    # Several starts at the coarsest level (the moments' map turned by each of START_TILTS about the
    # baseline face's centroid): ECC is a local search, and a head tilted differently can trap the
    # single start in a wrong optimum. The best-correlating start goes on to the finer levels.
    moments = _moments_affine(fb, ff)
    ys_b, xs_b = np.nonzero(fb)
    cx, cy = xs_b.mean(), ys_b.mean()
    starts = []
    for tilt in START_TILTS:
        c, sn = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
        turn = np.array([[c, -sn, cx - c * cx + sn * cy], [sn, c, cy - sn * cx - c * cy], [0, 0, 1]])
        starts.append(_compose(np.eye(3), moments, turn))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    try:
        for level in (4, 2, 1):  # coarse to fine
            s = 1.0 / level
            sb = cv2.resize(gb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            sf = cv2.resize(gf, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            mb = cv2.resize(valid_b.astype(np.uint8) * 255, (sb.shape[1], sb.shape[0]), interpolation=cv2.INTER_NEAREST)
            mf = cv2.resize(valid_f.astype(np.uint8) * 255, (sf.shape[1], sf.shape[0]), interpolation=cv2.INTER_NEAREST)
            db, df = _scaling(gb.shape, sb.shape), _scaling(gf.shape, sf.shape)
            results = []
            for start in starts:
                try:
                    ecc, w_level = cv2.findTransformECCWithMask(
                        sb, sf, mb, mf, _compose(df, start, np.linalg.inv(db)).astype(np.float32),
                        cv2.MOTION_AFFINE, criteria, 5)
                    results.append((ecc, _compose(np.linalg.inv(df), w_level, db)))
                except cv2.error:
                    if len(starts) == 1:
                        raise
            if not results:
                raise cv2.error("ECC diverged from every start")
            ecc, warp = max(results, key=lambda r: r[0])
            starts = [warp]
    except cv2.error as e:
        return Registration(to_full(moments), None, scale, baseline.shape[:2],
                            followup.shape[:2], float("nan"), float("nan"), False,
                            f"ECC alignment did not converge ({str(e).strip().splitlines()[-1][:120]})")
    flow = None
    if dense:
        aligned = cv2.warpAffine(gf, warp, (gb.shape[1], gb.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
        lf_b = cv2.warpAffine(lf.astype(np.uint8), warp, (gb.shape[1], gb.shape[0]),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
        # Each photo is filled where it has lesions itself, so a filled patch moves with its photo. (One
        # hole mask shared by both, in the baseline's frame, put a still patch into both photos at the
        # same place, and the flow stuck to it. Median error inside lesions, 4 repeat shots at 1590x1062:
        # 8.6-11.5 px with the shared mask, 5.2-13.3 with each photo's own, 3.0-8.3 adding the membrane
        # below; on the skin about 1-2.6 px throughout.)
        holes_b, holes_f = ndimage.binary_dilation(lb, grow, 2), ndimage.binary_dilation(lf_b, grow, 2)
        holes = holes_b | holes_f
        sigma = 0.02 * WORK_FACE_PX
        a = np.clip(_fill_lesions(gb, holes_b, sigma), 0, 255).astype(np.uint8)
        b = np.clip(_fill_lesions(aligned, holes_f, sigma), 0, 255).astype(np.uint8)
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        raw = dis.calc(a, b, None)  # a(x) ~ b(x + flow): offsets in the aligned follow-up's frame
        # Trust the flow on the skin only: not where lesions were filled (no texture there, so no
        # motion to see) nor off the face. Normalised convolution spreads the trusted flow into those
        # holes at a fine scale where trusted pixels are near; deeper inside large lesions the membrane
        # below takes over, bounded by the coarse scale's values off the face, where the offset decays to zero.
        face = face_b.astype(np.float32)
        trusted = face * ~holes
        offset = np.zeros_like(raw)
        for sigma_face in (FLOW_SMOOTH_COARSE, FLOW_SMOOTH):  # the fine scale overrides where it has support
            mean, den = _normalised_blur(raw, trusted, sigma_face * WORK_FACE_PX, 1e-6)
            support = den > 0.2
            offset[support] = mean[support]
        # Where even the fine scale has little support (inside large lesions), the membrane through the
        # surrounding flow rather than the coarse average (figures above).
        offset = _harmonic_fill(offset, ~support & ndimage.binary_dilation(face_b, grow, 2))
        offset *= np.minimum(cv2.GaussianBlur(face, (0, 0), FLOW_SMOOTH * WORK_FACE_PX) * 4, 1)[..., None]
        # An offset in the aligned frame is an offset in the follow-up by the affine's linear part;
        # stored in the follow-up photo's pixels, sampled on the baseline's working grid.
        flow = (offset @ warp[:, :2].T / np.array([d_follow[0, 0], d_follow[1, 1]])).astype(np.float32)
    reg = Registration(to_full(warp), flow, scale, baseline.shape[:2], followup.shape[:2], float(ecc),
                       float("nan"), True)
    warped_face = reg.warp(followup_face.astype(np.uint8), nearest=True) > 0
    base_face = baseline_face > 0
    reg.face_iou = float((warped_face & base_face).sum() / max((warped_face | base_face).sum(), 1))
    problems = []
    if not reg.ecc >= MIN_ECC:
        problems.append(f"correlation on the skin {reg.ecc:.2f} < {MIN_ECC}")
    if not reg.face_iou >= MIN_FACE_IOU:
        problems.append(f"aligned face overlap {reg.face_iou:.2f} < {MIN_FACE_IOU}")
    if problems:
        reg.ok, reg.reason = False, "registration doubtful: " + "; ".join(problems)
    return reg


def _scaling(src: tuple[int, ...], dst: tuple[int, ...]) -> np.ndarray:
    """[3, 3] map of pixel coordinates of an image of shape ``src`` onto its resize to ``dst`` (OpenCV's
    pixel-centre convention: ``x' = s (x + 0.5) - 0.5`` with ``s`` = new size / old size, per axis)."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    return np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1]])


def _compose(left: np.ndarray, warp: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ warp @ right`` for 3x3 ``left``/``right`` and a [2, 3] affine ``warp``; [2, 3]."""
    return (left @ np.vstack([np.asarray(warp, np.float64), [0, 0, 1]]) @ right)[:2]
