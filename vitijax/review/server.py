"""The review server: a Starlette app over one analysis folder, for ``python -m launch.review``.

Routes (every one needs the access token: ``?token=`` or the ``X-Review-Token`` header; the page, opened
with ``?token=``, also gets it as an HttpOnly, SameSite=Strict cookie, which is taken for its own script
and style only, never for the API: cookies ignore ports, so another local page could send it. A
POST must be ``Content-Type: application/json``, which a page of another origin cannot send without
the browser asking first):

    GET  /                         the review page (vitijax/review/static/, no build step, nothing fetched)
    GET  /static/<name>            its script and style (a fixed list of names)
    GET  /api/study                the photos in review order with their figures, and the agreement so far
    GET  /api/photo/<i>            one photo of the record: figures, follow-up, review, its files' addresses
    GET  /api/photo/<i>/image      the photo itself, upright (EXIF applied: the masks' frame), as JPEG
    POST /api/photo/<i>/preview    {"masks"}: the figures recomputed from edited masks, nothing saved
    POST /api/photo/<i>/review     {"reviewer", "base_revision", "status", "comment"[, "masks"]}: saves
    GET  /files/<path>             a PNG or JPEG under the analysis folder (masks, overlays, change maps)

Masks travel as run lengths, row-major, background first (``{"size": [h, w], "counts": [...]}``,
:func:`vitijax.data.annotations.runs_to_mask`). Refusals: 403 without the token; 404 for a path
outside the folder (``..``, an absolute path, a link leading out) or an unknown photo; 413 for a
body over :data:`MAX_BODY`; 400 for a mask of the wrong size, type or run total, an unknown
status or a missing reviewer; 409 when the photo was saved since the revision the edit started
from (:class:`vitijax.review.corrections.Conflict`). The photos the record names are the only files
served from outside the folder, and only by their number in the record, never by a path from the
request.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import socket
import threading
from typing import Any

import numpy as np

from vitijax.review import corrections as corr

STATIC = os.path.join(os.path.dirname(__file__), "static")
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
SERVED_EXTS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_BODY = 32 << 20  # bytes: run lengths of two 12-megapixel masks are a few MB at worst in practice
MAX_RUNS = 8_000_000  # per mask: more alternations than this is not a hand-painted mask
TOKEN_HEADER = "x-review-token"


class Refused(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


def decode_mask(payload: Any, hw: tuple[int, int], name: str) -> np.ndarray:
    """A mask payload ``{"size": [h, w], "counts": [runs]}`` -> uint8 {0, 1} [h, w]; :class:`Refused` (400)
    naming the problem: not that shape, a size other than the photo's, runs that are not non-negative
    integers or do not cover the photo exactly."""
    from vitijax.data.annotations import runs_to_mask

    if not isinstance(payload, dict) or set(payload) != {"size", "counts"}:
        raise Refused(400, f"{name} mask: expected {{\"size\": [h, w], \"counts\": [run lengths]}}")
    size, counts = payload["size"], payload["counts"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise Refused(400, f"{name} mask: size must be [height, width] in pixels")
    if tuple(size) != hw:
        raise Refused(400, f"{name} mask: {size[1]}x{size[0]} for a photo of {hw[1]}x{hw[0]}")
    if not isinstance(counts, list) or len(counts) > min(MAX_RUNS, hw[0] * hw[1] + 1):
        raise Refused(400, f"{name} mask: counts must be a list of at most {min(MAX_RUNS, hw[0] * hw[1] + 1)} runs")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
        raise Refused(400, f"{name} mask: run lengths must be non-negative integers (0 and 1 pixels alternate, "
                           "background first)")
    if sum(counts) != hw[0] * hw[1]:
        raise Refused(400, f"{name} mask: run lengths cover {sum(counts)} pixels, the photo has {hw[0] * hw[1]}")
    return runs_to_mask(counts, hw).astype(np.uint8)


def inside(root: str, rel: str) -> str:
    """The real path of ``rel`` under ``root`` if it is a file there (links followed), else :class:`Refused`
    (404): nothing outside the analysis folder is served."""
    try:
        path = os.path.realpath(os.path.join(root, rel))
    except ValueError:  # a NUL byte
        raise Refused(404, f"no such file in the analysis folder: {rel!r}") from None
    if os.path.isabs(rel) or os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        raise Refused(404, f"no such file in the analysis folder: {rel!r}")
    return path


def _fmt(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def photo_entry(c: corr.Corrections, study, i: int) -> dict[str, Any]:
    """What the page lists for photo ``i``."""
    p = study.photos[i]
    fu, review = p.get("follow_up") or {}, p.get("review") or {}
    reg = fu.get("registration") or {}
    return {"index": i, "patient": str(p["patient"]), "visit": p["visit"], "view": str(p["view"]),
            "shot": p.get("shot", 0), "status": p.get("status"), "ratio": _fmt(p.get("ratio")),
            "editable": "face_mask" in (p.get("files") or {}), "needs": corr.needs_look(p),
            "role": fu.get("role"), "change_common_pp": fu.get("change_common_pp"),
            "registration": {k: reg.get(k) for k in ("ok", "ecc", "face_iou", "reason")} if reg else None,
            "review": {k: review.get(k) for k in ("status", "reviewer", "time", "revision", "dice", "comment",
                                                   "corrected")} if review else None}


def photo_detail(c: corr.Corrections, study, i: int) -> dict[str, Any]:
    p = c.row(study, i)
    files = p.get("files") or {}
    review = p.get("review") or {}
    addr = lambda rel: ("/files/" + rel.replace(os.sep, "/")) if rel else None  # noqa: E731
    out = photo_entry(c, study, i)
    base = c.baseline_of(study, p)
    out.update(width=p.get("width"), height=p.get("height"), file=os.path.basename(p["file"]),
               reason=p.get("reason"), flags=p.get("flags") or [], crop_box=p.get("crop_box"),
               face_pixels=p.get("face_pixels"), vitiligo_pixels=p.get("vitiligo_pixels"),
               sdc_pp=fu_sdc(study, p), follow_up={k: v for k, v in (p.get("follow_up") or {}).items()
                                                    if k not in ("tracks",)},
               image=f"/api/photo/{i}/image",
               files={"face_mask": addr((review.get("files") or {}).get("face_mask") or files.get("face_mask")),
                      "lesion_mask": addr((review.get("files") or {}).get("lesion_mask") or files.get("lesion_mask")),
                      "model_face_mask": addr(files.get("face_mask")), "model_lesion_mask": addr(files.get("lesion_mask")),
                      "unassessable_mask": addr(files.get("unassessable_mask")),
                      "uncertainty": addr(files.get("uncertainty")), "change_map": addr(files.get("change_map")),
                      "aligned": addr(files.get("aligned")), "overlay": addr(files.get("overlay")),
                      "baseline_aligned": addr((base or {}).get("files", {}).get("aligned"))},
               baseline=None if base is None else {"visit": base["visit"], "shot": base.get("shot", 0),
                                                    "index": study.photos.index(base)})
    return out


def fu_sdc(study, p) -> float | None:
    return (p.get("follow_up") or {}).get("sdc_pp", study.follow_up.get("sdc_pp"))


def make_app(out: str, token: str | None = None, max_body: int = MAX_BODY):
    """(Starlette app, token) serving the review of the analysis folder ``out``."""
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    c = corr.Corrections(out)
    token = token or secrets.token_urlsafe(24)
    images: dict[int, bytes] = {}  # the last few photos served, JPEG-coded (a reviewer goes back and forth)
    images_lock = threading.Lock()

    def index_of(request: Request, study) -> int:
        raw = request.path_params["i"]
        if not (raw.isascii() and raw.isdigit() and len(raw) < 10) or int(raw) >= len(study.photos):
            raise Refused(404, f"no photo {raw!r} in the study record ({len(study.photos)} photos)")
        return int(raw)

    async def body(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise Refused(413, f"request body of {length} bytes; at most {max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise Refused(413, f"request body over {max_body} bytes")
            chunks.append(chunk)
        try:
            doc = json.loads(b"".join(chunks) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Refused(400, f"the body is not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise Refused(400, "the body must be a JSON object")
        return doc

    def masks_of(doc: dict, row) -> dict[str, np.ndarray] | None:
        masks = doc.get("masks")
        if masks is None:
            return None
        if not isinstance(masks, dict) or not masks or set(masks) - set(corr.MASKS):
            raise Refused(400, f"masks must be an object with face and/or lesion, got {list(masks)[:3]!r}"
                          if isinstance(masks, dict) else "masks must be an object with face and/or lesion")
        return {k: decode_mask(v, (row["height"], row["width"]), k) for k, v in masks.items()}

    async def page(request: Request):
        with open(os.path.join(STATIC, "index.html"), "rb") as f:
            return Response(f.read(), media_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                     "style-src 'self'; script-src 'self'; connect-src 'self'",
                                     "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise Refused(404, f"no such file: {name!r}")
        return FileResponse(os.path.join(STATIC, name), media_type=STATIC_FILES[name])

    async def study_api(request: Request):
        study = c.study()
        return JSONResponse(corr.study_lib.json_safe({
            "folder": os.path.basename(c.out), "photos": [photo_entry(c, study, i) for i in corr.queue(study)],
            "summary": corr.summary(study), "sdc_pp": study.follow_up.get("sdc_pp")}))

    async def photo_api(request: Request):
        study = c.study()
        return JSONResponse(corr.study_lib.json_safe(photo_detail(c, study, index_of(request, study))))

    def jpeg(i: int, path: str) -> bytes:
        with images_lock:
            if i in images:
                return images[i]
        buf = io.BytesIO()
        Image.fromarray(c.photo(path)).save(buf, format="JPEG", quality=92)
        with images_lock:
            images[i] = buf.getvalue()
            while len(images) > 4:
                images.pop(next(iter(images)))
        return buf.getvalue()

    async def image_api(request: Request):
        study = c.study()
        i = index_of(request, study)
        try:
            data = await run_in_threadpool(jpeg, i, study.photos[i]["file"])
        except (OSError, ValueError) as e:
            raise Refused(404, f"photo {i} cannot be read: {e}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    async def preview_api(request: Request):
        study = c.study()
        i = index_of(request, study)
        doc = await body(request)
        row = study.photos[i]
        if "face_mask" not in (row.get("files") or {}):
            raise Refused(400, f"photo {i} has no masks: {row.get('reason')}")
        masks = {**c.masks(row), **(masks_of(doc, row) or {})}
        return JSONResponse(corr.study_lib.json_safe(await run_in_threadpool(c.recompute, study, row, masks)))

    async def review_api(request: Request):
        study = c.study()
        i = index_of(request, study)
        doc = await body(request)
        masks = masks_of(doc, study.photos[i]) if "face_mask" in (study.photos[i].get("files") or {}) else None
        try:
            review = await run_in_threadpool(c.save, i, doc.get("reviewer", ""), doc.get("base_revision"),
                                             doc.get("status", ""), doc.get("comment", "") or "", masks)
        except corr.Conflict as e:
            return JSONResponse(corr.study_lib.json_safe({"error": str(e), "current": e.current}), status_code=409)
        except corr.Invalid as e:
            raise Refused(400, str(e)) from None
        return JSONResponse(corr.study_lib.json_safe({"review": review, "summary": corr.summary(c.study())}))

    async def files(request: Request):
        rel = request.path_params["path"]
        ext = os.path.splitext(rel)[1].lower()
        path = inside(c.out, rel)
        if ext not in SERVED_EXTS:
            raise Refused(404, f"only pictures are served, not {rel!r}")
        return FileResponse(path, media_type=SERVED_EXTS[ext], headers={"Cache-Control": "no-cache"})

    routes = [Route("/", page), Route("/static/{name}", static), Route("/api/study", study_api),
              Route("/api/photo/{i}", photo_api), Route("/api/photo/{i}/image", image_api),
              Route("/api/photo/{i}/preview", preview_api, methods=["POST"]),
              Route("/api/photo/{i}/review", review_api, methods=["POST"]), Route("/files/{path:path}", files)]

    async def refused(request: Request, exc: Refused):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    app = Starlette(routes=routes, exception_handlers={Refused: refused})
    return TokenGate(app, token), token


class TokenGate:
    """ASGI middleware: every HTTP request must carry the token (query ``token`` or header
    ``X-Review-Token``), compared in constant time; otherwise 403 and nothing else runs."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers, QueryParams
        from starlette.requests import cookie_parser
        from starlette.responses import JSONResponse

        headers = Headers(scope=scope)
        cookie = cookie_name(scope)
        query = QueryParams(scope.get("query_string", b"")).get("token")
        given = headers.get(TOKEN_HEADER) or query or ""
        if not given and scope["method"] == "GET" and scope["path"].startswith("/static/"):
            # only the page's own script and style, which a <script>/<link> cannot send a header for, may
            # rest on the cookie: cookies ignore ports, so another local page's request could carry it
            given = cookie_parser(headers.get("cookie", "")).get(cookie, "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return await JSONResponse({"error": "missing or wrong access token (use the address launch.review "
                                                "printed)"}, status_code=403)(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD") and not headers.get("content-type", "").startswith("application/json"):
            return await JSONResponse({"error": "send JSON (Content-Type: application/json)"},
                                      status_code=415)(scope, receive, send)
        if query is None or scope.get("path") != "/":
            return await self.app(scope, receive, send)

        async def send_with_cookie(message):  # the page's own script, style and pictures then carry it
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"set-cookie", (
                    f"{cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict").encode())]
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


def cookie_name(scope) -> str:
    """One cookie per server port: cookies ignore ports, and two reviews may run side by side."""
    return f"vitijax_review_{(scope.get('server') or ('', 0))[1]}"


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def serve_in_thread(app, sock: socket.socket):
    """Starts uvicorn on ``sock`` in a daemon thread; returns the uvicorn Server (``should_exit = True``
    stops it)."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    return server
