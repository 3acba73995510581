// Class review view: series the classifier held, with header facts, its explanation, a mosaic when
// the series was converted, and one-key labels (1 T1w, 2 T2w, 3 FLAIR, 4 other).
// Opened at #/class-review (or #/class-review/<series key>). Uses app.js's helpers ($, el, api, fmt,
// rater), which load first; text from the server is only ever set with textContent.
"use strict";

(() => {
  const CLASS_HASH = /^#\/class-review(?:\/([A-Za-z0-9][A-Za-z0-9_-]{0,127}))?$/;
  const KEYS = { 1: "T1w", 2: "T2w", 3: "FLAIR", 4: "other" };
  const cr = { rows: [], index: -1, item: null, seq: 0 };

  function route() {
    const m = CLASS_HASH.exec(window.location.hash);
    const on = Boolean(m);
    const was = document.body.dataset.view === "class";
    document.body.dataset.view = on ? "class" : "qc";
    $("main").hidden = on;
    $("#class-view").hidden = !on;
    if (on && (!was || (m[1] && m[1] !== cr.item?.series_key))) loadHeld(m[1] || null);
  }

  function setCount(n) {
    $("#class-count").textContent = n ? String(n) : "";
    $("#nav-class").title = `${n} series held for class review`;
  }

  async function refreshCount() {
    try {
      setCount((await api("/api/class-reviews?limit=1")).total);
    } catch (e) {
      // the QC view reports manifest errors; the count just stays as it was
    }
  }

  async function loadHeld(wantKey) {
    const seq = ++cr.seq;
    let body;
    try {
      body = await api("/api/class-reviews");
    } catch (e) {
      $("#class-empty").textContent = `Could not load the held series: ${e.message}`;
      $("#class-empty").hidden = false;
      return;
    }
    if (seq !== cr.seq) return;
    cr.rows = body.rows;
    setCount(body.total);
    renderList();
    const wanted = wantKey ? cr.rows.findIndex((r) => r.series_key === wantKey) : -1;
    if (wanted >= 0) selectHeld(wanted);
    else if (wantKey) openItem(wantKey, -1);
    else if (cr.rows.length) selectHeld(0);
    else showNone();
  }

  function renderList() {
    const tbody = $("#class-queue tbody");
    tbody.replaceChildren();
    cr.rows.forEach((r, i) => {
      const tr = el(
        "tr",
        { "data-key": r.series_key },
        el("td", { class: "num", text: fmt(r.confidence, 2) }),
        el("td", { class: "mono", text: r.series_key, title: r.series_key }),
        el("td", { text: r.auto_label || "" }),
        el("td", { text: [r.manufacturer, r.model_name].filter(Boolean).join(" "), title: r.model_name || "" }),
      );
      tr.addEventListener("click", () => selectHeld(i));
      tbody.append(tr);
    });
    $("#class-empty").hidden = cr.rows.length > 0;
    markSelected();
  }

  function markSelected() {
    document.querySelectorAll("#class-queue tbody tr").forEach((tr, i) => {
      tr.classList.toggle("selected", i === cr.index);
      if (i === cr.index) tr.scrollIntoView({ block: "nearest" });
    });
  }

  function showNone() {
    cr.index = -1;
    cr.item = null;
    $("#class-item").hidden = true;
    markSelected();
  }

  function selectHeld(i) {
    if (i < 0 || i >= cr.rows.length) return;
    openItem(cr.rows[i].series_key, i);
  }

  async function openItem(key, index) {
    cr.index = index;
    markSelected();
    try {
      const d = await api(`/api/class-reviews/${encodeURIComponent(key)}`);
      if (cr.index !== index) return; // moved on meanwhile
      cr.item = d;
      renderItem(d);
    } catch (e) {
      $("#class-status").textContent = `could not load ${key}: ${e.message}`;
    }
  }

  function renderItem(d) {
    const link = `#/class-review/${d.series_key}`;
    if (window.location.hash !== link) history.replaceState(null, "", link);
    $("#class-link").href = link;
    $("#class-item").hidden = false;
    $("#class-title").textContent = d.series_key;
    const auto = $("#class-auto");
    auto.textContent = d.review_label
      ? `labelled ${d.review_label} by ${d.reviewer}`
      : `classifier: ${d.auto_label || "?"} (confidence ${fmt(d.confidence, 2)})`;
    $("#class-status").textContent = "";
    $("#class-note").value = d.review_note || "";
    const flags = [
      d.auto_label ? `${d.auto_label}` : "not classified",
      d.confidence !== null && d.confidence !== undefined ? `confidence ${fmt(d.confidence, 2)}` : null,
      d.contrast_enhanced ? "contrast-enhanced" : null,
    ].filter(Boolean);
    $("#class-explanation").replaceChildren(el("strong", { text: flags.join(" · ") }), el("br"), d.explanation || "");
    const facts = $("#class-facts");
    facts.replaceChildren();
    for (const [k, v] of [
      ["subject", d.subject_id],
      ["study", d.study_id],
      ["series number", d.series_number],
      ["modality", d.modality],
      ["scanner", [d.manufacturer, d.model_name].filter(Boolean).join(" ")],
      ["field strength", d.field_strength ? `${fmt(d.field_strength, 2)} T` : null],
      ["instances", d.n_instances],
      ["study date (shifted)", d.study_date],
      ["state", d.state],
    ]) {
      facts.append(el("dt", { text: k }), el("dd", { text: v === null || v === undefined || v === "" ? "–" : String(v) }));
    }
    const img = $("#class-img");
    img.classList.remove("missing");
    $("#class-noimg").hidden = Boolean(d.image);
    if (d.image) {
      img.onerror = () => {
        img.classList.add("missing");
        $("#class-noimg").hidden = false;
      };
      img.src = d.image;
    } else {
      img.removeAttribute("src");
      img.classList.add("missing");
    }
  }

  async function setLabel(label) {
    const d = cr.item;
    if (!d) return;
    const status = $("#class-status");
    status.textContent = "saving…";
    try {
      const row = await api(`/api/class-reviews/${encodeURIComponent(d.series_key)}`, {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label, reviewer: rater() || null, note: $("#class-note").value || null }),
      });
      setCount(row.remaining);
      const at = cr.rows.findIndex((r) => r.series_key === d.series_key);
      if (at >= 0) cr.rows.splice(at, 1);
      renderList();
      status.textContent = `saved: ${row.label} by ${row.reviewer}; ${row.remaining} left`;
      status.dataset.saved = `${d.series_key}:${row.label}`;
      if (cr.rows.length) selectHeld(Math.min(Math.max(at, 0), cr.rows.length - 1));
      else {
        cr.index = -1;
        markSelected();
      }
    } catch (e) {
      status.textContent = `not saved: ${e.message}`;
    }
  }

  function onKey(ev) {
    if (document.body.dataset.view !== "class") return;
    const target = ev.target;
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
    if (ev.key === "Escape" && typing) return target.blur();
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key;
    if (KEYS[key]) (ev.preventDefault(), setLabel(KEYS[key]));
    else if (key === "j" || key === "ArrowDown") (ev.preventDefault(), selectHeld(cr.index + 1));
    else if (key === "k" || key === "ArrowUp") (ev.preventDefault(), selectHeld(cr.index - 1));
    else if (key === "n") (ev.preventDefault(), $("#class-note").focus());
    else if (key === "?") (ev.preventDefault(), $("#help").showModal());
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("#class-bar button[data-label]").forEach((b) =>
      b.addEventListener("click", () => setLabel(b.dataset.label)),
    );
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);
    route();
    refreshCount();
    setInterval(refreshCount, 30000);
  });
})();
