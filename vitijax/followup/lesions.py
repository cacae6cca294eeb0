"""Lesions across two visits: the change map, lesion tracking and repigmentation patterns.

Everything here works in the baseline photo's pixels: the follow-up's masks are first carried onto
the baseline by the registration (:meth:`Registration.warp` with ``nearest=True``), so a pixel of
the baseline and the same pixel of the warped follow-up show the same point of the skin.

**Lesions** are the 8-connected components of a lesion mask inside the face with at least
:data:`MIN_LESION_SHARE` of the face's pixels (smaller specks are noise at the network's
resolution and are left out of tracking, not of the ratio).

**Tracking.** A baseline lesion and a follow-up lesion are *linked* when they overlap by at least
:data:`MIN_LINK_OVERLAP` of the smaller one's area. The links form a bipartite graph; each of its
connected parts is one *event*:

=========== ===================================================================================
new         a follow-up lesion linked to no baseline lesion
disappeared a baseline lesion linked to no follow-up lesion (inside the region both photos see)
merged      several baseline lesions linked to one follow-up lesion
split       one baseline lesion linked to several follow-up lesions
enlarged    one to one, the follow-up lesion's area (in baseline pixels) > (1 + :data:`SIZE_CHANGE`) x
shrunk      one to one, the area < (1 - :data:`SIZE_CHANGE`) x the baseline's
stable      one to one, in between
=========== ===================================================================================

(several to several is reported as ``merged and split``). Areas are counted on the common region
only, so a lesion that the follow-up photo sees only in part is not called shrunk. Each track keeps
its identity across visits through the Hungarian assignment on overlap
(``scipy.optimize.linear_sum_assignment``, the one-to-one pairing with the largest total overlap):
in a merge or split one of the lesions continues the baseline lesion's track, the others are its
branches.

**Change map** (baseline pixels, :data:`CHANGE_CODES`): outside the common region, normal skin in
both visits, stable lesion (depigmented in both), repigmented (depigmented at baseline only) and
newly depigmented (at follow-up only).

**Repigmentation pattern** of a baseline lesion, from its repigmented pixels R (inside the lesion at
baseline and in the common region, normal skin at follow-up): the part of R in components that do
not touch the lesion's outer outline (its holes filled: pigment islands it already had are inside)
is *perifollicular* (islands of pigment inside the lesion, around hair follicles); the part that
touches it is *marginal* (the border retreating); *diffuse* is the fall of the lesion's
estimated depigmentation degree (:mod:`vitijax.followup.fvasi`), a general rise in pigment that
changes no pixel's label. The pattern named is the largest of perifollicular share, marginal
share and (when the degree fell by at least 0.1) diffuse.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage, optimize, sparse
from scipy.sparse import csgraph

MIN_LESION_SHARE = 0.0005  # a lesion has at least this share of the face's pixels (0.05 %)
MIN_LINK_OVERLAP = 0.1  # two lesions are linked when they share this much of the smaller one's area
SIZE_CHANGE = 0.25  # one-to-one: enlarged above 1 + this of the baseline area, shrunk below 1 - this
DIFFUSE_MIN_FALL = 0.1  # a fall of the depigmentation degree (0..1) that counts as diffuse repigmentation
CHANGE_CODES = {0: "outside the common region", 1: "normal skin", 2: "stable lesion", 3: "repigmented",
                4: "newly depigmented"}
CHANGE_COLOURS = {0: (0, 0, 0), 1: (60, 60, 60), 2: (230, 230, 230), 3: (40, 200, 80), 4: (230, 40, 40)}
_EIGHT = np.ones((3, 3), bool)


def lesions(mask: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels [h, w] int32, count): the lesions of ``mask`` [h, w] inside ``face`` [h, w], numbered 1..count
    in raster order of their first pixel; components under :data:`MIN_LESION_SHARE` of the face are 0."""
    inside = (mask > 0) & (face > 0)
    labels, n = ndimage.label(inside, _EIGHT)
    if not n:
        return labels, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= max(1.0, MIN_LESION_SHARE * float((face > 0).sum()))
    keep[0] = False
    renumber = np.zeros(n + 1, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum())


def change_map(base_lesion: np.ndarray, follow_lesion: np.ndarray, common: np.ndarray) -> np.ndarray:
    """[h, w] uint8 codes of :data:`CHANGE_CODES`; all inputs [h, w] in baseline pixels, ``follow_lesion``
    the warped follow-up mask and ``common`` the face pixels both photos see."""
    b, f = base_lesion > 0, follow_lesion > 0
    out = np.where(b & f, 2, np.where(b, 3, np.where(f, 4, 1))).astype(np.uint8)
    out[~(common > 0)] = 0
    return out


def change_picture(codes: np.ndarray, photo: np.ndarray | None = None) -> np.ndarray:
    """[h, w, 3] uint8: the change map in :data:`CHANGE_COLOURS`, over the dimmed ``photo`` [h, w, 3]
    outside the common region when given."""
    lut = np.array([CHANGE_COLOURS[k] for k in sorted(CHANGE_COLOURS)], np.uint8)
    rgb = lut[codes]
    if photo is not None:
        outside = codes == 0
        rgb[outside] = (photo[outside] * 0.35).astype(np.uint8)
    return rgb


@dataclasses.dataclass
class Track:
    """One event between two visits: baseline lesions ``base`` and follow-up lesions ``follow`` (label
    numbers of :func:`lesions`), their areas in baseline pixels, what happened and, for baseline lesions,
    the repigmentation pattern measures."""

    event: str
    base: list[int]
    follow: list[int]
    base_area: int
    follow_area: int
    continues: dict[int, int]  # baseline lesion -> the follow-up lesion that carries its identity on
    pairs: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # the links themselves
    perifollicular_px: int = 0
    marginal_px: int = 0
    pattern: str = ""

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "continues": {str(k): v for k, v in self.continues.items()},
                "pairs": [list(p) for p in self.pairs],
                "area_change_pct": (100.0 * (self.follow_area - self.base_area) / self.base_area
                                    if self.base_area else None)}


def track(base_labels: np.ndarray, follow_labels: np.ndarray, common: np.ndarray | None = None) -> list[Track]:
    """Links the lesions of two visits and names each event (module docstring).

    base_labels, follow_labels: [h, w] int lesion labels of :func:`lesions`, both in baseline pixels
    (the follow-up's labelled on its warped mask). ``common`` [h, w]: where both photos see the face; a
    baseline lesion outside it is not called disappeared, nor a follow-up lesion outside it new (both
    are left out). Returns the events, baseline-ordered, then the new lesions.
    """
    nb, nf = int(base_labels.max(initial=0)), int(follow_labels.max(initial=0))
    whole_b = np.bincount(base_labels.ravel(), minlength=nb + 1)
    whole_f = np.bincount(follow_labels.ravel(), minlength=nf + 1)
    c = np.ones(base_labels.shape, bool) if common is None else common > 0
    area_b = np.bincount(base_labels[c].ravel(), minlength=nb + 1)  # what both photos see of each lesion
    area_f = np.bincount(follow_labels[c].ravel(), minlength=nf + 1)
    both = (base_labels > 0) & (follow_labels > 0) & c
    pairs = base_labels[both].astype(np.int64) * (nf + 1) + follow_labels[both]
    overlap = np.bincount(pairs, minlength=(nb + 1) * (nf + 1)).reshape(nb + 1, nf + 1)
    smaller = np.minimum(area_b[:, None], area_f[None, :])
    linked = (overlap >= MIN_LINK_OVERLAP * np.maximum(smaller, 1)) & (overlap > 0)
    linked[0, :] = linked[:, 0] = False
    seen_b = area_b >= 0.5 * whole_b  # at least half of it in the common region
    seen_f = area_f >= 0.5 * whole_f
    # Hungarian assignment on overlap: who continues whose identity.
    continues: dict[int, int] = {}
    if nb and nf:
        rows, cols = optimize.linear_sum_assignment(-(overlap[1:, 1:] * linked[1:, 1:]))
        continues = {int(r) + 1: int(c) + 1 for r, c in zip(rows, cols) if linked[r + 1, c + 1]}
    # The connected parts of the bipartite link graph (baseline lesions 0..nb-1, follow-up nb..nb+nf-1).
    rows, cols = np.nonzero(linked[1:, 1:])
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, nb + cols)), shape=(nb + nf, nb + nf))
    part_of = csgraph.connected_components(graph, directed=False)[1]
    events: list[Track] = []
    done_f: set[int] = set()
    reported: set[int] = set()
    for b in range(1, nb + 1):
        part = part_of[b - 1]
        if part in reported:
            continue  # reported with an earlier baseline lesion of its part
        reported.add(part)
        part_b = {int(i) + 1 for i in np.nonzero(part_of[:nb] == part)[0]}
        part_f = {int(j) + 1 for j in np.nonzero(part_of[nb:] == part)[0]}
        done_f |= part_f
        if not part_f and not seen_b[b]:
            continue  # out of the other photo's sight: nothing to say
        a_b, a_f = int(area_b[sorted(part_b)].sum()), int(area_f[sorted(part_f)].sum())
        if not part_f:
            event = "disappeared"
        elif len(part_b) > 1 and len(part_f) > 1:
            event = "merged and split"
        elif len(part_b) > 1:
            event = "merged"
        elif len(part_f) > 1:
            event = "split"
        elif a_f > (1 + SIZE_CHANGE) * a_b:
            event = "enlarged"
        elif a_f < (1 - SIZE_CHANGE) * a_b:
            event = "shrunk"
        else:
            event = "stable"
        events.append(Track(event, sorted(part_b), sorted(part_f), a_b, a_f,
                            {k: v for k, v in continues.items() if k in part_b},
                            [(i, j) for i in sorted(part_b) for j in sorted(part_f) if linked[i, j]]))
    for f in range(1, nf + 1):
        if f not in done_f and seen_f[f]:
            events.append(Track("new", [], [f], 0, int(area_f[f]), {}))
    return events


def patterns(events: list[Track], base_labels: np.ndarray, follow_mask: np.ndarray,
             common: np.ndarray | None = None) -> None:
    """Fills each baseline event's perifollicular and marginal repigmented pixels (module docstring) and
    its ``pattern`` (without the diffuse measure, which :func:`name_pattern` adds). ``follow_mask``:
    the warped follow-up lesion mask [h, w] (all of it, not only the tracked lesions); ``common``: where
    both photos see the face (what the follow-up does not see did not repigment)."""
    objects = ndimage.find_objects(base_labels)
    seen = np.ones(base_labels.shape, bool) if common is None else common > 0
    for ev in events:
        for b in ev.base:
            sl = objects[b - 1]
            if sl is None:
                continue
            sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)  # one pixel of outside around
            lesion = base_labels[sl] == b
            repig = lesion & seen[sl] & ~(follow_mask[sl] > 0)
            parts, n = ndimage.label(repig, _EIGHT)
            if not n:
                continue
            filled = ndimage.binary_fill_holes(lesion)  # old islands inside are not its border
            outline = ndimage.binary_dilation(~filled, _EIGHT, border_value=1) & filled
            touching = np.zeros(n + 1, bool)
            touching[np.unique(parts[outline])] = True
            sizes = np.bincount(parts.ravel(), minlength=n + 1)
            ev.marginal_px += int(sizes[1:][touching[1:]].sum())
            ev.perifollicular_px += int(sizes[1:][~touching[1:]].sum())
        name_pattern(ev)


def name_pattern(ev: Track, degree_fall: float | None = None) -> str:
    """The dominant repigmentation pattern of ``ev`` (``""`` when nothing repigmented)."""
    rep = ev.perifollicular_px + ev.marginal_px
    scores = {}
    if rep and ev.base_area:
        scores["perifollicular"] = ev.perifollicular_px / ev.base_area
        scores["marginal"] = ev.marginal_px / ev.base_area
    if degree_fall is not None and degree_fall >= DIFFUSE_MIN_FALL:
        scores["diffuse"] = degree_fall
    ev.pattern = max(scores, key=scores.get) if scores else ""
    return ev.pattern


def links(events: list[Track]) -> set[tuple[int, int]]:
    """Every (baseline lesion, follow-up lesion) pair that the events link."""
    return {pair for ev in events for pair in ev.pairs}
