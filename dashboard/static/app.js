// MRI Foundry QC dashboard: queue, filters, histograms, volume pane, one-key ratings.
// Plain DOM, no build step, no external resources. Text from the server is only ever set with
// textContent (never parsed as HTML), so a note or a label cannot inject markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

const state = {
  facets: null,
  rows: [],
  total: 0,
  cursors: [null], // cursor that loaded each page; last entry is the current page
  nextCursor: null,
  index: -1, // selected row on the current page
  detail: null,
  hist: null,
  tags: new Set(),
  loadSeq: 0,
};

const fmt = (v, digits = 3) => {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(digits + 1)).toString();
};

async function api(path, options = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...options });
  if (resp.status === 401) {
    window.location.assign("/login");
    throw new Error("not signed in");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${resp.status}: ${detail}`);
  }
  return body;
}

// ---- filters ---------------------------------------------------------------------------------
function filterParams() {
  const form = $("#filters");
  const p = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v !== "" && k !== "sort") p.set(k, v);
  return p;
}

function buildFilterForm(f) {
  const fill = (sel, items) => {
    for (const it of items) sel.append(el("option", { value: it.value, text: `${it.value} (${it.n})` }));
  };
  fill($("#f-label"), f.label);
  fill($("#f-scanner"), f.scanner);
  fill($("#f-site"), f.site);
  $("#f-site").disabled = f.site.length === 0;
  if (f.site.length === 0) $("#f-site").title = "no site pseudonyms in this manifest";
  const tbody = $("#ranges tbody");
  for (const m of f.metrics) {
    tbody.append(
      el(
        "tr",
        {},
        el("td", { text: m }),
        el("td", {}, el("input", { type: "number", step: "any", name: `${m}_min`, className: "num" })),
        el("td", {}, el("input", { type: "number", step: "any", name: `${m}_max`, className: "num" })),
      ),
    );
  }
  const tags = $("#tags");
  f.tags.forEach((t, i) => {
    const key = i < 9 ? String(i + 1) : i === 9 ? "0" : "";
    const box = el("input", { type: "checkbox", value: t });
    box.addEventListener("change", () => toggleTag(t, box.checked));
    const label = el("label", { class: "tag", "data-tag": t }, box, ` ${t} `);
    if (key) label.append(el("kbd", { text: key }));
    tags.append(label);
  });
  renderSummary(f);
  $("#rater").value = localStorage.getItem("mrifoundry.rater") || f.default_rater || "";
}

// Header counts: decisions over the whole manifest (not the filtered queue) and how many are rated.
// Re-read after every rating, and every 30 s for ratings other reviewers or a pipeline run made.
function renderSummary(f) {
  const total = f.decision.reduce((a, d) => a + d.n, 0);
  const parts = f.decision.map((d) => `${d.value}: ${d.n}`);
  parts.push(`rated: ${f.rated ?? 0} of ${total}`);
  const box = $("#summary");
  box.textContent = parts.join(" · ");
  box.dataset.counts = JSON.stringify(Object.fromEntries([...f.decision.map((d) => [d.value, d.n]), ["rated", f.rated ?? 0]]));
}

async function refreshSummary() {
  try {
    const f = await api("/api/facets");
    state.facets.decision = f.decision;
    state.facets.rated = f.rated;
    renderSummary(f);
  } catch (e) {
    // keep the last counts; the queue shows errors that matter
  }
}

let filterTimer = null;
function onFilterChange() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    state.cursors = [null];
    loadQueue(0);
    loadHistograms();
  }, 250);
}

// ---- queue -----------------------------------------------------------------------------------
async function loadQueue(selectIndex = 0, wantId = null) {
  const seq = ++state.loadSeq;
  const p = filterParams();
  p.set("sort", $("#filters").elements.sort.value);
  p.set("limit", "50");
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) p.set("cursor", cursor);
  const err = $("#queue-error");
  try {
    const page = await api(`/api/queue?${p}`);
    if (seq !== state.loadSeq) return; // a newer request superseded this one
    err.hidden = true;
    state.rows = page.rows;
    state.total = page.total;
    state.nextCursor = page.next_cursor;
    renderQueue();
    const wanted = wantId ? state.rows.findIndex((r) => r.volume_id === wantId) : -1;
    if (wanted >= 0) select(wanted);
    else if (wantId) openVolume(wantId);
    else if (state.rows.length) select(Math.min(Math.max(selectIndex, 0), state.rows.length - 1));
    else showEmpty();
  } catch (e) {
    err.textContent = `Queue: ${e.message}`;
    err.hidden = false;
  }
}

function renderQueue() {
  const tbody = $("#queue tbody");
  tbody.replaceChildren();
  state.rows.forEach((r, i) => {
    const tr = el(
      "tr",
      { "data-id": r.volume_id, title: r.top_metric ? `largest robust z: ${r.top_metric}` : "" },
      el("td", { class: "num", text: fmt(r.score, 2) }),
      el("td", { class: "mono", text: r.volume_id, title: r.volume_id }),
      el("td", { class: "mono", text: r.subject_id || "", title: r.subject_id || "" }),
      el("td", { text: r.label || "", title: r.label || "" }),
      el("td", { text: r.model_name || "", title: r.model_name || "" }),
      el("td", {}, decisionBadge(r)),
    );
    tr.addEventListener("click", () => select(i));
    tbody.append(tr);
  });
  const start = (state.cursors.length - 1) * 50;
  $("#page-info").textContent = state.total
    ? `${start + 1}–${start + state.rows.length} of ${state.total}`
    : "no volumes match";
  $("#prev").disabled = state.cursors.length <= 1;
  $("#next").disabled = !state.nextCursor;
  markSelected();
}

function decisionBadge(r) {
  const span = el("span", { class: `badge ${r.decision || ""}`, text: r.decision || "?" });
  if (r.rating) {
    span.classList.add("rated");
    span.title = `rated ${r.rating} (automatic: ${r.auto_decision})`;
  } else span.title = "automatic decision";
  return span;
}

function markSelected() {
  document.querySelectorAll("#queue tbody tr").forEach((tr, i) => {
    tr.classList.toggle("selected", i === state.index);
    if (i === state.index) tr.scrollIntoView({ block: "nearest" });
  });
}

function nextPage() {
  if (!state.nextCursor) return false;
  state.cursors.push(state.nextCursor);
  loadQueue(0);
  return true;
}

function prevPage(selectLast = false) {
  if (state.cursors.length <= 1) return false;
  state.cursors.pop();
  loadQueue(selectLast ? 49 : 0);
  return true;
}

function move(delta) {
  const i = state.index + delta;
  if (i >= state.rows.length) nextPage();
  else if (i < 0) prevPage(true);
  else select(i);
}

// ---- volume pane -----------------------------------------------------------------------------
function showEmpty() {
  state.index = -1;
  state.detail = null;
  $("#volume").hidden = true;
  $("#empty").hidden = false;
  drawHistograms();
}

async function select(i) {
  state.index = i;
  markSelected();
  const row = state.rows[i];
  if (!row) return;
  const id = row.volume_id;
  try {
    const d = await api(`/api/volumes/${encodeURIComponent(id)}`);
    if (state.rows[state.index]?.volume_id !== id) return; // user moved on meanwhile
    state.detail = d;
    renderDetail(d);
  } catch (e) {
    $("#rating-status").textContent = `could not load ${id}: ${e.message}`;
  }
}

// A URL per volume: #/volume/<id> opens that volume, whether or not it is on the current queue page.
const VOLUME_HASH = /^#\/volume\/([A-Za-z0-9][A-Za-z0-9_-]{0,127})$/;
function hashVolume() {
  const m = VOLUME_HASH.exec(window.location.hash);
  return m ? m[1] : null;
}

async function openVolume(id) {
  const onPage = state.rows.findIndex((r) => r.volume_id === id);
  if (onPage >= 0) return select(onPage);
  state.index = -1;
  markSelected();
  try {
    const d = await api(`/api/volumes/${encodeURIComponent(id)}`);
    if (state.index !== -1) return; // the user picked a queue row meanwhile
    state.detail = d;
    renderDetail(d);
  } catch (e) {
    $("#queue-error").textContent = `Link to ${id}: ${e.message}`;
    $("#queue-error").hidden = false;
  }
}

function renderDetail(d) {
  const link = `#/volume/${d.volume_id}`;
  if (window.location.hash !== link && document.body.dataset.view !== "class") history.replaceState(null, "", link);
  $("#vol-link").href = link;
  $("#empty").hidden = true;
  $("#volume").hidden = false;
  $("#vol-title").textContent = d.volume_id;
  const badge = $("#vol-decision");
  badge.className = `badge ${d.decision || ""}${d.rating ? " rated" : ""}`;
  badge.textContent = d.rating ? `${d.decision} (rated by ${d.rater})` : `${d.decision} (automatic)`;
  $("#vol-meta").textContent = [
    `subject ${d.subject_id}`,
    d.label,
    [d.manufacturer, d.model_name].filter(Boolean).join(" "),
    d.field_strength ? `${fmt(d.field_strength, 2)} T` : null,
    d.study_date ? `study ${d.study_date} (shifted)` : null,
    `outlier score ${fmt(d.score, 2)}`,
  ]
    .filter(Boolean)
    .join(" · ");
  state.tags = new Set(d.tags || []);
  document.querySelectorAll("#tags input").forEach((box) => (box.checked = state.tags.has(box.value)));
  $("#note").value = d.note || "";
  $("#rating-status").textContent = d.rating ? `rated ${d.rating}${d.rated_at ? " at " + d.rated_at : ""}` : "";
  for (const kind of ["native", "registered", "overlay"]) {
    const img = $(`#img-${kind}`);
    img.classList.remove("missing");
    img.onerror = () => img.classList.add("missing");
    img.src = d.images[kind];
  }
  const tbody = $("#metrics tbody");
  tbody.replaceChildren();
  const names = [...state.facets.metrics, ...Object.keys(d.metrics_extra || {}).sort()];
  for (const m of names) {
    const value = state.facets.metrics.includes(m) ? d[m] : d.metrics_extra[m];
    const pct = d.percentiles?.[m];
    const z = d[`z_${m}`];
    const tr = el(
      "tr",
      {},
      el("td", { text: m, title: m }),
      el("td", { class: "num", text: fmt(value), title: String(value ?? "") }),
      el("td", { class: `num${z !== undefined && z !== null && z > 3.5 ? " warn" : ""}`, text: fmt(z, 2) }),
      el("td", { class: "num" }, pctBar(pct ? pct.percentile : null)),
      el("td", { class: "num", text: pct ? fmt(pct.median) : "–" }),
    );
    tbody.append(tr);
  }
  const group = `${d.model_name || "?"} × ${d.label || "?"}`;
  $("#group-info").textContent =
    d.ref_level === "group" || !d.ref_level
      ? `group: ${group}, ${d.group_n} volumes`
      : `group ${group} has ${d.group_n} (too few): compared with ${
          d.ref_level === "class" ? `all ${d.label} volumes` : "all volumes"
        }, ${d.ref_n}`;
  const reasons = $("#reasons");
  reasons.replaceChildren(
    el("li", { text: `automatic decision: ${d.auto_decision}` }),
    ...(d.reasons || []).map((r) => el("li", { text: r })),
  );
  const cls = [
    d.class_label ? `${d.class_label}` : "not classified",
    d.confidence !== null && d.confidence !== undefined ? `confidence ${fmt(d.confidence, 2)}` : null,
    d.contrast_enhanced ? "contrast-enhanced" : null,
    d.needs_review ? "physics and keywords disagree: needs review" : null,
  ].filter(Boolean);
  $("#explanation").replaceChildren(el("strong", { text: cls.join(" · ") }), el("br"), d.explanation || "");
  const facts = $("#facts");
  facts.replaceChildren();
  for (const [k, v] of [
    ["study", d.study_id],
    ["series", d.series_key],
    ["native shape", d.native_shape ? d.native_shape.join("×") : null],
    ["native spacing (mm)", d.native_spacing ? d.native_spacing.map((x) => fmt(x, 2)).join(" × ") : null],
    ["converter", d.converter],
    ["skull strip", d.skullstrip_backend],
  ]) {
    facts.append(el("dt", { text: k }), el("dd", { text: v ?? "–" }));
  }
  drawHistograms();
}

function pctBar(p) {
  if (p === null || p === undefined) return document.createTextNode("–");
  const wrap = el("span", { class: "pct" });
  const bar = el("span", { class: "pct-bar" });
  bar.style.width = `${Math.max(0, Math.min(100, p))}%`;
  if (p < 5 || p > 95) wrap.classList.add("extreme");
  wrap.append(bar, el("span", { class: "pct-text", text: `${fmt(p, 2)}` }));
  return wrap;
}

// ---- ratings ---------------------------------------------------------------------------------
function rater() {
  return $("#rater").value.trim();
}

async function saveRating(rating, advance) {
  const d = state.detail;
  if (!d) return;
  const status = $("#rating-status");
  status.textContent = "saving…";
  try {
    const row = await api(`/api/volumes/${encodeURIComponent(d.volume_id)}/rating`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rating, tags: [...state.tags], note: $("#note").value || null, rater: rater() || null }),
    });
    d.rating = row.rating;
    d.rater = row.rater;
    d.decision = row.rating;
    d.tags = row.tags;
    d.note = row.note;
    const qrow = state.rows.find((r) => r.volume_id === d.volume_id);
    if (qrow) {
      qrow.rating = row.rating;
      qrow.decision = row.rating;
    }
    renderQueue();
    refreshSummary();
    status.textContent = `saved: ${row.rating} by ${row.rater}`;
    status.dataset.saved = `${d.volume_id}:${row.rating}`;
    const badge = $("#vol-decision");
    badge.className = `badge ${row.rating} rated`;
    badge.textContent = `${row.rating} (rated by ${row.rater})`;
    if (advance) move(1);
  } catch (e) {
    status.textContent = `not saved: ${e.message}`;
  }
}

async function clearRating() {
  const d = state.detail;
  if (!d) return;
  try {
    await api(`/api/volumes/${encodeURIComponent(d.volume_id)}/rating`, { method: "DELETE" });
    $("#rating-status").textContent = "rating cleared: automatic decision applies";
    const qrow = state.rows.find((r) => r.volume_id === d.volume_id);
    if (qrow) {
      qrow.rating = null;
      qrow.decision = qrow.auto_decision;
    }
    renderQueue();
    refreshSummary();
    if (state.index >= 0) select(state.index);
    else openVolume(d.volume_id);
  } catch (e) {
    $("#rating-status").textContent = `not cleared: ${e.message}`;
  }
}

function toggleTag(tag, on) {
  if (on) state.tags.add(tag);
  else state.tags.delete(tag);
  document.querySelectorAll("#tags input").forEach((box) => (box.checked = state.tags.has(box.value)));
  // An already-rated volume keeps its rating; tags and notes are saved with it at once.
  if (state.detail?.rating) saveRating(state.detail.rating, false);
}

// ---- histograms ------------------------------------------------------------------------------
async function loadHistograms() {
  try {
    state.hist = await api(`/api/histograms?${filterParams()}`);
  } catch (e) {
    state.hist = null;
  }
  drawHistograms();
}

function drawHistograms() {
  const box = $("#histograms");
  box.replaceChildren();
  if (!state.hist || !state.facets) return;
  const W = 200,
    H = 56;
  for (const m of state.facets.metrics) {
    const h = state.hist[m];
    const fig = el("figure", { class: "hist", "data-metric": m });
    const s = svg("svg", { viewBox: `0 0 ${W} ${H + 12}`, width: W, height: H + 12, role: "img" });
    const max = Math.max(1, ...h.counts);
    const bw = W / h.counts.length;
    h.counts.forEach((c, i) => {
      const bh = (c / max) * H;
      const r = svg("rect", { x: i * bw + 0.5, y: H - bh, width: Math.max(bw - 1, 1), height: bh, class: "bar" });
      const lo = h.lo + ((h.hi - h.lo) * i) / h.counts.length;
      const hi = h.lo + ((h.hi - h.lo) * (i + 1)) / h.counts.length;
      const t = svg("title");
      t.textContent = `${m} ${fmt(lo)}–${fmt(hi)}: ${c} (click to filter)`;
      r.append(t);
      r.addEventListener("click", () => setRange(m, lo, hi));
      s.append(r);
    });
    const v = state.detail ? state.detail[m] : null;
    if (v !== null && v !== undefined && h.lo !== null) {
      const span = h.hi - h.lo || 1;
      const x = Math.max(0, Math.min(W, ((v - h.lo) / span) * W));
      s.append(svg("line", { x1: x, x2: x, y1: 0, y2: H, class: "current" }));
    }
    const lo = svg("text", { x: 0, y: H + 11, class: "axis" });
    lo.textContent = fmt(h.lo);
    const hi = svg("text", { x: W, y: H + 11, class: "axis end" });
    hi.textContent = fmt(h.hi);
    s.append(lo, hi);
    fig.append(el("figcaption", { text: `${m} (n=${h.n})` }), s);
    box.append(fig);
  }
}

function setRange(metric, lo, hi) {
  const f = $("#filters").elements;
  f[`${metric}_min`].value = Number(lo.toPrecision(6));
  f[`${metric}_max`].value = Number(hi.toPrecision(6));
  onFilterChange();
}

// ---- keyboard --------------------------------------------------------------------------------
const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);
function onKey(ev) {
  if (document.body.dataset.view === "class") return; // review.js has the keys there
  const target = ev.target;
  if (ev.key === "Escape" && TYPING.has(target.tagName)) {
    target.blur();
    if (target.id === "note" && state.detail?.rating) saveRating(state.detail.rating, false);
    return;
  }
  if (TYPING.has(target.tagName) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key;
  const tags = state.facets ? state.facets.tags : [];
  const handled = () => ev.preventDefault();
  if (key === "j" || key === "ArrowDown") (handled(), move(1));
  else if (key === "k" || key === "ArrowUp") (handled(), move(-1));
  else if (key === "p") (handled(), saveRating("pass", true));
  else if (key === "f") (handled(), saveRating("fail", true));
  else if (key === "r") (handled(), saveRating("review", true));
  else if (key === "c") (handled(), clearRating());
  else if (key === "n") (handled(), $("#note").focus());
  else if (key === "]") (handled(), nextPage());
  else if (key === "[") (handled(), prevPage());
  else if (key === "?") (handled(), $("#help").showModal());
  else if (/^[0-9]$/.test(key) && state.detail) {
    const i = key === "0" ? 9 : Number(key) - 1;
    if (tags[i]) (handled(), toggleTag(tags[i], !state.tags.has(tags[i])));
  }
}

// ---- start -----------------------------------------------------------------------------------
async function start() {
  try {
    state.facets = await api("/api/facets");
  } catch (e) {
    $("#queue-error").textContent = `Could not load the manifest: ${e.message}`;
    $("#queue-error").hidden = false;
    return;
  }
  buildFilterForm(state.facets);
  const form = $("#filters");
  form.addEventListener("input", onFilterChange);
  form.addEventListener("change", onFilterChange);
  form.addEventListener("reset", () => setTimeout(onFilterChange, 0));
  form.addEventListener("submit", (ev) => ev.preventDefault());
  $("#prev").addEventListener("click", () => prevPage());
  $("#next").addEventListener("click", () => nextPage());
  document.querySelectorAll("#rating-bar button[data-rating]").forEach((b) =>
    b.addEventListener("click", () => saveRating(b.dataset.rating, true)),
  );
  $("#clear-rating").addEventListener("click", clearRating);
  $("#help-btn").addEventListener("click", () => $("#help").showModal());
  $("#rater").addEventListener("change", () => localStorage.setItem("mrifoundry.rater", rater()));
  $("#note").addEventListener("change", () => {
    if (state.detail?.rating) saveRating(state.detail.rating, false);
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => {
    const id = hashVolume();
    if (id && id !== state.detail?.volume_id) openVolume(id);
  });
  setInterval(refreshSummary, 30000);
  document.body.dataset.ready = "1";
  await Promise.all([loadQueue(0, hashVolume()), loadHistograms()]);
}

document.addEventListener("DOMContentLoaded", start);
