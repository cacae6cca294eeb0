// The vitijax review page: plain JavaScript on a canvas, served by launch.review (no build step).
// Masks live here as one byte per photo pixel (Uint8Array [h * w], row-major); an edit paints them and
// repaints only the rectangle it touched. Every name that came from the data is set as text, never as HTML.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const HEADERS = { "X-Review-Token": TOKEN };
const $ = (id) => document.getElementById(id);
const COLOURS = { lesion: [40, 230, 60, 120], face: [255, 215, 0, 40], edge: [255, 215, 0, 230],
                  unassessable: [255, 0, 255, 110] };

const S = {
  photos: [], order: [], cur: null, img: null, w: 0, h: 0,
  masks: { lesion: null, face: null }, model: { lesion: null, face: null }, unass: null,
  overlay: null, ovctx: null, ovdata: null, uncert: null,
  scale: 1, tx: 0, ty: 0, tool: "brush", target: "lesion", size: 12,
  layers: { lesion: true, face: true, unassessable: true, uncertainty: false, change: true },
  undo: [], redo: [], stroke: null, drag: null, poly: [], space: false, mouse: null,
  revision: 0, dirty: false, previewSeq: 0, previewTimer: null, loading: false, saving: null,
};

// ---------------------------------------------------------------- server
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...HEADERS, ...(opts.headers || {}) } });
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) {
    const err = new Error((doc && doc.error) || `${r.status} ${r.statusText}`);
    err.status = r.status; err.doc = doc;
    throw err;
  }
  return doc;
}
async function blobOf(path) {
  const r = await fetch(path, { headers: HEADERS });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.blob();
}
async function maskOf(path, w, h) {
  const bmp = await createImageBitmap(await blobOf(path));
  const c = new OffscreenCanvas(w, h), ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bmp, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h).data, m = new Uint8Array(w * h);
  for (let i = 0, j = 0; i < m.length; i++, j += 4) m[i] = px[j] > 127 ? 1 : 0;
  return m;
}
function runs(m) {  // run lengths, background first (vitijax.data.annotations.runs_to_mask)
  const counts = []; let v = 0, n = 0;
  for (let i = 0; i < m.length; i++) {
    const b = m[i] ? 1 : 0;
    if (b !== v) { counts.push(n); n = 1; v = b; } else n++;
  }
  counts.push(n);
  return counts;
}
function maskPayload() {
  const out = {};
  for (const k of ["face", "lesion"]) out[k] = { size: [S.h, S.w], counts: runs(S.masks[k]) };
  return out;
}

// ---------------------------------------------------------------- formatting
const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
const yesno = (v) => v === true ? "yes" : v === false ? "no" : "–";
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
function message(text, error = false) { const m = $("message"); m.textContent = text; m.className = error ? "error" : ""; }
function viewName(p) { return p.view + (p.shot ? ` shot ${p.shot}` : ""); }

// ---------------------------------------------------------------- the list
async function loadStudy() {
  const doc = await api("/api/study");
  S.photos = doc.photos;
  if (!S.order.length) S.order = doc.photos.map((p) => p.index);
  $("folder").textContent = doc.folder;
  const s = doc.summary;
  $("summary").textContent = `${s.reviewed}/${s.photos} reviewed · ${s.status.approved} approved · ` +
    `${s.status.rejected} rejected · lesion Dice model vs reviewed ${fmt(s.lesion_dice_mean, 3)} (pooled ${fmt(s.lesion_dice_pooled, 3)})`;
  const body = document.querySelector("#queue tbody");
  body.replaceChildren();
  for (const p of S.photos) {
    const tr = document.createElement("tr");
    tr.className = "row"; tr.dataset.index = p.index;
    cell(tr, p.patient); cell(tr, String(p.visit)); cell(tr, viewName(p));
    cell(tr, fmt(p.review && p.review.corrected ? p.review.corrected.ratio : p.ratio));
    const look = cell(tr, p.needs.length ? String(p.needs.length) : "", "look");
    look.title = p.needs.join("\n");
    cell(tr, p.registration ? (p.registration.ok ? `ok ${fmt(p.registration.ecc)}` : "doubtful") : "");
    const st = p.review ? p.review.status : (p.editable ? "" : "no masks");
    cell(tr, st, st);
    tr.addEventListener("click", () => openPhoto(p.index));
    if (S.cur && S.cur.index === p.index) tr.classList.add("open");
    body.appendChild(tr);
  }
  return doc;
}

// ---------------------------------------------------------------- opening a photo
async function openPhoto(index, force = false) {
  if (S.loading) { message("still loading the last photo …"); return; }
  if (S.saving) await S.saving;  // a save under way finishes on the photo it was made for
  if (S.dirty && !force && !confirm("This photo has unsaved edits. Leave it?")) return;
  S.loading = true;
  document.body.dataset.ready = "";
  message("loading …");
  try {
    // everything is loaded before any of it replaces the open photo: a failed load leaves nothing half-swapped
    const p = await api(`/api/photo/${index}`);
    const img = await createImageBitmap(await blobOf(p.image));
    let masks = { lesion: null, face: null }, model = { lesion: null, face: null }, unass = null;
    if (p.editable) {
      const [l, f, ml, mf] = await Promise.all([maskOf(p.files.lesion_mask, p.width, p.height),
        maskOf(p.files.face_mask, p.width, p.height), maskOf(p.files.model_lesion_mask, p.width, p.height),
        maskOf(p.files.model_face_mask, p.width, p.height)]);
      masks = { lesion: l, face: f }; model = { lesion: ml, face: mf };
      unass = p.files.unassessable_mask ? await maskOf(p.files.unassessable_mask, p.width, p.height) : null;
    }
    const uncert = p.files.uncertainty && p.crop_box ? await uncertaintyLayer(p.files.uncertainty) : null;
    const compare = await compareBlobs(p);
    clearTimeout(S.previewTimer); S.previewSeq++;  // a recomputation asked for the last photo is dropped
    Object.assign(S, { cur: p, w: p.width, h: p.height, img, masks, model, unass, uncert, undo: [], redo: [], poly: [],
                       dirty: false, edits: 0, revision: p.review ? p.review.revision : 0, conflict: undefined });
    $("conflict").hidden = true;
    S.overlay = new OffscreenCanvas(S.w, S.h);
    S.ovctx = S.overlay.getContext("2d");
    S.ovdata = S.ovctx.createImageData(S.w, S.h);
    paintOverlay(0, 0, S.w, S.h);
    fit(p.crop_box || undefined);  // the face, as the networks cut it; 0 shows the whole photo
    showDetails(p);
    showCompare(p, compare);
    for (const tr of document.querySelectorAll("#queue tr.row")) tr.classList.toggle("open", Number(tr.dataset.index) === index);
    message(p.editable ? "" : `no masks to correct: ${p.reason || p.status}`);
    document.body.dataset.ready = String(index);
  } catch (e) {
    message(`could not open photo ${index}: ${e.message}`, true);
  } finally {
    S.loading = false;
  }
}

async function uncertaintyLayer(path) {
  const bmp = await createImageBitmap(await blobOf(path));
  const c = new OffscreenCanvas(bmp.width, bmp.height), ctx = c.getContext("2d");
  ctx.drawImage(bmp, 0, 0);
  const d = ctx.getImageData(0, 0, bmp.width, bmp.height);
  for (let j = 0; j < d.data.length; j += 4) { const v = d.data[j]; d.data[j] = 255; d.data[j + 1] = 60; d.data[j + 2] = 0; d.data[j + 3] = v; }
  ctx.putImageData(d, 0, 0);
  return c;
}

function showDetails(p) {
  $("title").textContent = `${p.patient} · visit ${p.visit} · ${viewName(p)} (${p.file})`;
  $("reasons").textContent = p.needs.length ? "Look at: " + p.needs.join("; ") : "";
  const fu = p.follow_up || {};
  $("ratio-model").textContent = fmt(p.ratio);
  $("change-model").textContent = fu.role === "follow-up" ? fmt(fu.change_common_pp) : "–";
  $("detect-model").textContent = fu.role === "follow-up" ? yesno(fu.detectable) : "–";
  $("fvasi-model").textContent = fmt(fu.role === "follow-up" ? fu.fvasi_followup : fu.fvasi, 1);
  $("sdc").textContent = fmt(p.sdc_pp);
  const reg = p.registration;
  $("registration").textContent = reg ? `Registered onto visit ${p.baseline ? p.baseline.visit : "?"}: ECC ${fmt(reg.ecc)}, ` +
    `face overlap ${fmt(reg.face_iou)}${reg.ok ? "" : " — " + reg.reason}` : (fu.role === "baseline" ? "Baseline of this view" : "");
  const r = p.review;
  $("reviewstate").textContent = r ? `${r.status} by ${r.reviewer}, ${r.time} (revision ${r.revision})` : "not reviewed";
  $("comment").value = r ? (r.comment || "") : "";
  updateNow(r && r.corrected ? r.corrected : null);
  for (const id of ["save", "approve", "reject"]) $(id).disabled = !p.editable;
}

async function compareBlobs(p) {  // this visit registered onto the baseline, the baseline, the change map
  if (!p.files.aligned || !p.files.baseline_aligned) return null;
  return { base: await blobOf(p.files.baseline_aligned), self: await blobOf(p.files.aligned),
           change: p.files.change_map ? await blobOf(p.files.change_map) : null };
}
function showCompare(p, blobs) {
  for (const img of ["base-img", "this-img", "change-img"]) { const el = $(img); if (el.src.startsWith("blob:")) URL.revokeObjectURL(el.src); el.removeAttribute("src"); }
  $("compare").hidden = !blobs;
  if (!blobs) return;
  $("base-img").src = URL.createObjectURL(blobs.base);
  $("this-img").src = URL.createObjectURL(blobs.self);
  if (blobs.change) $("change-img").src = URL.createObjectURL(blobs.change);
  $("changebox").hidden = !(blobs.change && S.layers.change);
  blend();
}
function blend() { $("this-img").style.opacity = String($("blend").value / 100); }

// ---------------------------------------------------------------- figures, live and recomputed
function counts() {  // one pass over the photo: F-Vitiligo as the pipeline counts it, and the lesion Dice against the model
  const f = S.masks.face, l = S.masks.lesion, u = S.unass, a = S.model.lesion, n = f.length;
  let face = 0, les = 0, both = 0, model = 0, now = 0;
  for (let i = 0; i < n; i++) {
    const y = l[i] && f[i];
    if (f[i] && !(u && u[i])) { face++; if (l[i]) les++; }
    if (a[i]) { model++; if (y) both++; }
    if (y) now++;
  }
  return { face, les, ratio: face ? 100 * les / face : NaN, dice: model + now ? 2 * both / (model + now) : NaN };
}
function updateLive() {
  if (!S.masks.face) return;
  const c = counts();
  $("ratio-now").textContent = fmt(c.ratio);
  $("ratio-now").dataset.value = String(c.ratio);
  $("dice-now").textContent = fmt(c.dice, 3);
}
function updateNow(fig) {
  updateLive();
  const fu = (S.cur && S.cur.follow_up) || {};
  const follow = fu.role === "follow-up";
  const pending = fig === "pending";
  const v = (k, d) => pending ? "…" : fig ? fmt(fig[k], d) : "";
  $("change-now").textContent = follow ? v("change_common_pp") : "–";
  $("detect-now").textContent = follow ? (pending ? "…" : fig ? yesno(fig.detectable) : "") : "–";
  $("fvasi-now").textContent = fu.role ? v("fvasi", 1) : "–";
}
function edited() {
  S.dirty = true;
  S.edits = (S.edits || 0) + 1;
  document.body.dataset.edits = String(S.edits);
  updateLive();
  clearTimeout(S.previewTimer);
  S.previewTimer = setTimeout(preview, 350);
}
async function preview() {  // the change and F-VASI need the photos: the server recomputes them
  if (!S.cur || !S.cur.editable) return;
  const seq = ++S.previewSeq, index = S.cur.index;
  updateNow("pending");
  try {
    const fig = await api(`/api/photo/${index}/preview`, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ masks: maskPayload() }) });
    if (seq === S.previewSeq && S.cur.index === index) updateNow(fig);
  } catch (e) {
    if (seq === S.previewSeq) message(`could not recompute: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------- drawing
function paintOverlay(x0, y0, x1, y1) {
  x0 = Math.max(0, x0 | 0); y0 = Math.max(0, y0 | 0); x1 = Math.min(S.w, Math.ceil(x1)); y1 = Math.min(S.h, Math.ceil(y1));
  if (x1 <= x0 || y1 <= y0 || !S.ovdata) return;
  const d = S.ovdata.data, w = S.w, h = S.h, L = S.masks.lesion, F = S.masks.face, U = S.unass, lay = S.layers;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * w + x, j = 4 * i;
      let c = null;
      if (F) {
        if (lay.unassessable && U && U[i]) c = COLOURS.unassessable;
        else if (lay.lesion && L[i]) c = COLOURS.lesion;
        else if (lay.face && F[i]) {
          const edge = (x === 0 || !F[i - 1]) || (x === w - 1 || !F[i + 1]) || (y === 0 || !F[i - w]) || (y === h - 1 || !F[i + w]);
          c = edge ? COLOURS.edge : COLOURS.face;
        }
      }
      if (c) { d[j] = c[0]; d[j + 1] = c[1]; d[j + 2] = c[2]; d[j + 3] = c[3]; } else d[j + 3] = 0;
    }
  }
  S.ovctx.putImageData(S.ovdata, 0, 0, x0, y0, x1 - x0, y1 - y0);
  draw();
}
let drawQueued = false;
function draw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; render(); });
}
function render() {
  const cv = $("canvas"), ctx = cv.getContext("2d");
  const r = cv.getBoundingClientRect();
  if (cv.width !== Math.round(r.width) || cv.height !== Math.round(r.height)) { cv.width = Math.round(r.width); cv.height = Math.round(r.height); }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, cv.width, cv.height);
  if (!S.img) return;
  ctx.setTransform(S.scale, 0, 0, S.scale, S.tx, S.ty);
  ctx.imageSmoothingEnabled = S.scale < 2;
  ctx.drawImage(S.img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  if (S.overlay) ctx.drawImage(S.overlay, 0, 0);
  if (S.uncert && S.layers.uncertainty) {
    const b = S.cur.crop_box;
    ctx.globalAlpha = 0.7; ctx.drawImage(S.uncert, b[0], b[1], b[2] - b[0], b[3] - b[1]); ctx.globalAlpha = 1;
  }
  ctx.lineWidth = 2 / S.scale;
  if (S.poly.length) {
    ctx.strokeStyle = "#00e5ff"; ctx.beginPath();
    S.poly.forEach(([x, y], k) => k ? ctx.lineTo(x, y) : ctx.moveTo(x, y));
    if (S.mouse) ctx.lineTo(S.mouse[0], S.mouse[1]);
    ctx.stroke();
  }
  if (S.mouse && (S.tool === "brush" || S.tool === "eraser")) {
    ctx.strokeStyle = S.tool === "brush" ? "#fff" : "#f44"; ctx.beginPath();
    ctx.arc(S.mouse[0], S.mouse[1], S.size / 2, 0, 2 * Math.PI); ctx.stroke();
  }
  $("status").textContent = `${S.w}×${S.h}  zoom ${(100 * S.scale).toFixed(0)} %  ${S.tool} on ${S.target}  size ${S.size}px` +
    (S.mouse ? `  x ${S.mouse[0] | 0} y ${S.mouse[1] | 0}` : "") + (S.dirty ? "  (unsaved edits)" : "");
}
function fit(box) {  // the whole photo, or box [x0, y0, x1, y1] (photo pixels), centred in the window
  const r = $("canvas").getBoundingClientRect();
  if (!S.w || !r.width) return;
  const [x0, y0, x1, y1] = Array.isArray(box) ? box : [0, 0, S.w, S.h];
  S.scale = Math.min(r.width / (x1 - x0), r.height / (y1 - y0));
  S.tx = (r.width - (x0 + x1) * S.scale) / 2; S.ty = (r.height - (y0 + y1) * S.scale) / 2;
  draw();
}
function toPhoto(ev) {
  const r = $("canvas").getBoundingClientRect();
  return [(ev.clientX - r.left - S.tx) / S.scale, (ev.clientY - r.top - S.ty) / S.scale];
}
function screenOf(x, y) {  // photo pixel -> page coordinates (for tests and tools)
  const r = $("canvas").getBoundingClientRect();
  return [r.left + S.tx + x * S.scale, r.top + S.ty + y * S.scale];
}

// ---------------------------------------------------------------- editing
function grow(box, x0, y0, x1, y1) {
  box[0] = Math.min(box[0], x0); box[1] = Math.min(box[1], y0); box[2] = Math.max(box[2], x1); box[3] = Math.max(box[3], y1);
}
function stamp(m, cx, cy, value, box) {
  const r = S.size / 2, x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(S.w, Math.ceil(cx + r) + 1);
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(S.h, Math.ceil(cy + r) + 1), r2 = r * r;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
    if (dx * dx + dy * dy <= r2) m[y * S.w + x] = value;
  }
  if (x1 > x0 && y1 > y0) { grow(box, x0, y0, x1, y1); paintOverlay(x0 - 1, y0 - 1, x1 + 1, y1 + 1); }
}
function line(m, a, b, value, box) {
  const n = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / Math.max(1, S.size / 4)));
  for (let k = 1; k <= n; k++) stamp(m, a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n, value, box);
}
function beginEdit() { return { target: S.target, before: S.masks[S.target].slice(), box: [Infinity, Infinity, -Infinity, -Infinity] }; }
function endEdit(e) {
  const [x0, y0, x1, y1] = e.box;
  if (!(x1 > x0 && y1 > y0)) return;
  const m = S.masks[e.target], w = x1 - x0, before = new Uint8Array(w * (y1 - y0)), after = new Uint8Array(w * (y1 - y0));
  for (let y = y0; y < y1; y++) {
    before.set(e.before.subarray(y * S.w + x0, y * S.w + x1), (y - y0) * w);
    after.set(m.subarray(y * S.w + x0, y * S.w + x1), (y - y0) * w);
  }
  S.undo.push({ target: e.target, box: e.box, before, after });
  if (S.undo.length > 100) S.undo.shift();
  S.redo = [];
  edited();
}
function applyPatch(p, data) {
  const [x0, y0, x1, y1] = p.box, m = S.masks[p.target], w = x1 - x0;
  for (let y = y0; y < y1; y++) m.set(data.subarray((y - y0) * w, (y - y0 + 1) * w), y * S.w + x0);
  paintOverlay(x0 - 1, y0 - 1, x1 + 1, y1 + 1);
  edited();
}
function undo() { const p = S.undo.pop(); if (p) { applyPatch(p, p.before); S.redo.push(p); } }
function redo() { const p = S.redo.pop(); if (p) { applyPatch(p, p.after); S.undo.push(p); } }
function fillPolygon(value) {
  if (S.poly.length < 3 || !S.masks.face) { S.poly = []; draw(); return; }
  const xs = S.poly.map((p) => p[0]), ys = S.poly.map((p) => p[1]);
  const x0 = Math.max(0, Math.floor(Math.min(...xs))), y0 = Math.max(0, Math.floor(Math.min(...ys)));
  const x1 = Math.min(S.w, Math.ceil(Math.max(...xs)) + 1), y1 = Math.min(S.h, Math.ceil(Math.max(...ys)) + 1);
  const e = beginEdit(), m = S.masks[S.target];
  if (x1 > x0 && y1 > y0) {
    const c = new OffscreenCanvas(x1 - x0, y1 - y0), ctx = c.getContext("2d");
    ctx.beginPath(); S.poly.forEach(([x, y], k) => k ? ctx.lineTo(x - x0, y - y0) : ctx.moveTo(x - x0, y - y0));
    ctx.closePath(); ctx.fillStyle = "#fff"; ctx.fill();
    const a = ctx.getImageData(0, 0, x1 - x0, y1 - y0).data;
    for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) if (a[4 * ((y - y0) * (x1 - x0) + (x - x0)) + 3] > 127) m[y * S.w + x] = value;
    grow(e.box, x0, y0, x1, y1);
    paintOverlay(x0 - 1, y0 - 1, x1 + 1, y1 + 1);
  }
  S.poly = [];
  endEdit(e);
}

// ---------------------------------------------------------------- saving
async function save(status) {
  if (!S.cur || !S.cur.editable) return;
  if (S.loading || S.saving) { message(S.loading ? "still loading the photo …" : "still saving …"); return; }
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) { message("Type your name as reviewer first.", true); $("reviewer").focus(); return; }
  localStorage.setItem("vitijax-reviewer", reviewer);
  const comment = $("comment").value;
  if (status === "rejected" && !comment.trim()) { message("Say in the comment why the photo is rejected.", true); $("comment").focus(); return; }
  const cur = S.cur, index = cur.index, edits = S.edits;
  const body = { reviewer, base_revision: S.revision, status, comment };
  if (S.dirty) body.masks = maskPayload();
  message("saving …");
  let done;
  S.saving = new Promise((resolve) => { done = resolve; });  // no second save; another photo opens after it
  try {
    const doc = await api(`/api/photo/${index}/review`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    S.revision = doc.review.revision;
    if (S.edits === edits) S.dirty = false;  // strokes made while saving stay unsaved
    $("conflict").hidden = true;
    cur.review = doc.review;
    $("reviewstate").textContent = `${doc.review.status} by ${doc.review.reviewer}, ${doc.review.time} (revision ${doc.review.revision})`;
    updateNow(doc.review.corrected);
    message(`${status === "corrected" ? "saved" : status} (revision ${doc.review.revision}); F-Vitiligo ${fmt(doc.review.corrected.ratio)} %`);
    await loadStudy();
    document.body.dataset.saved = `${index}:${doc.review.revision}`;
  } catch (e) {
    if (e.status === 409) {
      const theirs = e.doc.current || {};
      message(`Not saved: ${theirs.reviewer} saved this photo at ${theirs.time} (revision ${theirs.revision}) while you edited. ` +
              "Your edits are still here.", true);
      S.conflict = { revision: theirs.revision, status };
      $("conflict").hidden = false;
    } else message(`not saved: ${e.message}`, true);
  } finally {
    S.saving = null;
    done();
  }
  draw();
}
function saveOver() {  // on purpose, with the decision that was refused, and always with the masks seen here
  if (!S.conflict || S.saving || S.loading) return;
  const { revision, status } = S.conflict;
  S.revision = revision; S.dirty = true;
  save(status);
}
function loadTheirs() { if (S.cur) openPhoto(S.cur.index, true); }
function step(k) {  // in the order the session began with: a decided photo moving down the list does not change it
  if (!S.cur) return;
  const pos = S.order.indexOf(S.cur.index);
  if (pos + k >= 0 && pos + k < S.order.length) openPhoto(S.order[pos + k]);
}

// ---------------------------------------------------------------- wiring
function setTool(t) {
  S.tool = t; S.poly = [];
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("on", b.dataset.tool === t);
  draw();
}
function setTarget(t) { S.target = t; for (const r of document.querySelectorAll("input[name=target]")) r.checked = r.value === t; draw(); }
function setSize(v) { S.size = Math.max(1, Math.min(200, Math.round(v))); $("size").value = S.size; $("sizeval").textContent = S.size; draw(); }
function toggleLayer(k, on) {
  S.layers[k] = on === undefined ? !S.layers[k] : on;
  const box = document.querySelector(`[data-layer=${k}]`); if (box) box.checked = S.layers[k];
  if (k === "change") $("changebox").hidden = !(S.cur && S.cur.files.change_map && S.layers.change);
  else if (k !== "uncertainty") paintOverlay(0, 0, S.w, S.h);
  draw();
}

function init() {
  const cv = $("canvas");
  $("reviewer").value = localStorage.getItem("vitijax-reviewer") || "";
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  for (const r of document.querySelectorAll("input[name=target]")) r.addEventListener("change", () => setTarget(r.value));
  for (const c of document.querySelectorAll("[data-layer]")) c.addEventListener("change", () => toggleLayer(c.dataset.layer, c.checked));
  $("size").addEventListener("input", () => setSize(Number($("size").value)));
  $("undo").addEventListener("click", undo); $("redo").addEventListener("click", redo); $("fit").addEventListener("click", () => fit());
  $("save").addEventListener("click", () => save("corrected"));
  $("approve").addEventListener("click", () => save("approved"));
  $("reject").addEventListener("click", () => save("rejected"));
  $("save-over").addEventListener("click", saveOver); $("load-theirs").addEventListener("click", loadTheirs);
  $("blend").addEventListener("input", blend);
  cv.addEventListener("contextmenu", (ev) => ev.preventDefault());
  cv.addEventListener("dblclick", (ev) => {
    if (S.tool !== "polygon" || S.space) return;
    const n = S.poly.length;  // its two clicks added the last corner twice (pointer events carry no click count)
    if (n >= 2 && Math.hypot(S.poly[n - 1][0] - S.poly[n - 2][0], S.poly[n - 1][1] - S.poly[n - 2][1]) * S.scale < 4) S.poly.pop();
    fillPolygon(ev.altKey ? 0 : 1);
  });
  cv.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = cv.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = Math.exp(-ev.deltaY * 0.0015), s = Math.max(0.02, Math.min(32, S.scale * f));
    S.tx = mx - (mx - S.tx) * s / S.scale; S.ty = my - (my - S.ty) * s / S.scale; S.scale = s;
    draw();
  }, { passive: false });
  cv.addEventListener("pointerdown", (ev) => {
    if (!S.img) return;
    cv.setPointerCapture(ev.pointerId);
    const p = toPhoto(ev);
    if (ev.button === 1 || ev.button === 2 || S.tool === "pan" || S.space) {
      S.drag = { x: ev.clientX, y: ev.clientY, tx: S.tx, ty: S.ty }; return;
    }
    if (!S.masks.face || ev.button !== 0) return;
    if (S.tool === "polygon") { S.poly.push(p); draw(); return; }
    S.stroke = beginEdit(); S.stroke.last = p;
    stamp(S.masks[S.target], p[0], p[1], S.tool === "brush" ? 1 : 0, S.stroke.box);
  });
  cv.addEventListener("pointermove", (ev) => {
    const p = toPhoto(ev); S.mouse = p;
    if (S.drag) { S.tx = S.drag.tx + ev.clientX - S.drag.x; S.ty = S.drag.ty + ev.clientY - S.drag.y; }
    else if (S.stroke) { line(S.masks[S.stroke.target], S.stroke.last, p, S.tool === "brush" ? 1 : 0, S.stroke.box); S.stroke.last = p; }
    draw();
  });
  const up = () => { S.drag = null; if (S.stroke) { const e = S.stroke; S.stroke = null; endEdit(e); } };
  cv.addEventListener("pointerup", up); cv.addEventListener("pointercancel", up);
  cv.addEventListener("pointerleave", () => { S.mouse = null; draw(); });
  window.addEventListener("resize", draw);
  window.addEventListener("beforeunload", (ev) => { if (S.dirty) { ev.preventDefault(); ev.returnValue = ""; } });
  window.addEventListener("keyup", (ev) => { if (ev.key === " ") S.space = false; });
  window.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input[type=text], input:not([type]), textarea")) return;
    const k = ev.key, ctrl = ev.ctrlKey || ev.metaKey;
    if (ctrl && (k === "z" || k === "Z")) { ev.preventDefault(); ev.shiftKey ? redo() : undo(); return; }
    if (ctrl && (k === "y" || k === "Y")) { ev.preventDefault(); redo(); return; }
    if (ctrl) return;
    const keys = { b: () => setTool("brush"), e: () => setTool("eraser"), p: () => setTool("polygon"), h: () => setTool("pan"),
      l: () => setTarget("lesion"), f: () => setTarget("face"), "[": () => setSize(S.size / 1.25), "]": () => setSize(S.size * 1.25 + 1),
      1: () => toggleLayer("lesion"), 2: () => toggleLayer("face"), 3: () => toggleLayer("unassessable"), 4: () => toggleLayer("uncertainty"),
      5: () => toggleLayer("change"), 0: () => fit(), s: () => save("corrected"), a: () => save("approved"), r: () => save("rejected"),
      n: () => step(1), j: () => step(1), k: () => step(-1),
      Enter: () => { if (S.tool === "polygon") fillPolygon(ev.altKey ? 0 : 1); },
      Escape: () => { S.poly = []; draw(); }, Backspace: () => { S.poly.pop(); draw(); },
      " ": () => { S.space = true; } };
    const fn = keys[k] || keys[k.toLowerCase()];
    if (fn) { ev.preventDefault(); fn(); }
  });
  setTool("brush"); setSize(12);
  loadStudy().then(() => { if (S.photos.length) openPhoto(S.photos[0].index); })
    .catch((e) => message(`could not load the study: ${e.message}`, true));
}

window.vitijaxReview = { state: S, screenOf, openPhoto, counts };
init();
