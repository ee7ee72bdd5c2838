// clipguard studio: the few behaviours a server-rendered page cannot have. No framework, no
// build step; every page works without this file except live linting, uploads and the slider.
"use strict";

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------- editor: live lint
function setupEditor() {
  const editor = document.querySelector(".editor");
  if (!editor) return;
  const area = document.getElementById("yaml");
  const gutter = document.getElementById("gutter");
  const list = document.getElementById("problems");
  const status = document.getElementById("lint-status");
  let bad = new Set(Array.from(list.children, (li) => Number(li.dataset.line)));
  let seq = 0;

  function drawGutter() {
    const lines = area.value.split("\n").length;
    gutter.textContent = "";
    for (let i = 1; i <= lines; i++) {
      const span = el("span", bad.has(i) ? { class: "err", id: `gutter-${i}` } : {}, `${i}\n`);
      gutter.appendChild(span);
    }
    gutter.scrollTop = area.scrollTop;
  }

  function show(problems) {
    list.textContent = "";
    bad = new Set();
    for (const p of problems) {
      const where = p.line ? `line ${p.line}, column ${p.column}: ` : "";
      const li = el("li", { "data-line": String(p.line) }, where + p.message);
      list.appendChild(li);
      if (p.line) bad.add(p.line);
    }
    const n = problems.length;
    status.textContent = n ? `${n} problem${n === 1 ? "" : "s"}` : "No problems";
    status.className = n ? "bad" : "good";
    drawGutter();
  }

  const lint = debounce(async () => {
    const mine = ++seq;
    status.textContent = "checking…";
    const response = await fetch(editor.dataset.lintUrl, {
      method: "POST",
      headers: { "Content-Type": "text/plain; charset=utf-8" },
      body: area.value,
    });
    if (mine !== seq) return; // an older answer: the text has changed since
    if (!response.ok) { status.textContent = `could not check (${response.status})`; return; }
    show((await response.json()).problems);
  }, 250);

  area.addEventListener("input", () => { drawGutter(); lint(); });
  for (const set of document.querySelectorAll("fieldset.label-lists")) {
    const lines = (cls) => set.querySelector(cls).value.split("\n").map((s) => s.trim()).filter(Boolean);
    set.querySelector(".apply-lists").addEventListener("click", async () => {
      const note = set.querySelector(".lists-status");
      const response = await fetch(set.dataset.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          text: area.value, label: set.dataset.label,
          prompts: lines(".prompts"), negatives: lines(".negatives"),
        }),
      });
      const answer = await response.json();
      if (!response.ok) { note.textContent = answer.error || `not applied (${response.status})`; return; }
      area.value = answer.text;
      note.textContent = "applied to the text above";
      area.dispatchEvent(new Event("input"));
    });
  }
  area.addEventListener("scroll", () => { gutter.scrollTop = area.scrollTop; });
  drawGutter();
}

// ---------------------------------------------------------------- try: upload and score
function setupTry() {
  const form = document.getElementById("try-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("try-file").files[0];
    const status = document.getElementById("try-status");
    const out = document.getElementById("try-result");
    if (!file) { status.textContent = "Choose a file first."; return; }
    status.textContent = `Scoring ${file.name}…`;
    const response = await fetch(form.dataset.url, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "X-Filename": file.name },
      body: file,
    });
    const text = await response.text();
    status.textContent = response.ok ? "" : `Not scored (${response.status}).`;
    if (response.headers.get("content-type")?.startsWith("text/html")) {
      out.innerHTML = new DOMParser().parseFromString(text, "text/html").body.innerHTML;
    } else {
      out.textContent = text;
    }
  });
}

// ---------------------------------------------------------------- tune: slider
function precisionRecall(data, threshold) {
  const passes = (p) => p.score >= threshold && p.margin_ok;
  const tp = data.positives.filter(passes).length;
  const fp = data.negatives.filter(passes).length;
  return {
    tp, fp,
    precision: tp + fp ? tp / (tp + fp) : null,
    recall: data.positives.length ? tp / data.positives.length : null,
    queue: data.queue.filter((s) => s >= threshold).length,
  };
}

function setupTune() {
  const holder = document.getElementById("tune-data");
  if (!holder) return;
  const data = JSON.parse(holder.textContent);
  const slider = document.getElementById("threshold-slider");
  const number = document.getElementById("threshold");
  const svg = document.getElementById("histogram");
  const NS = "http://www.w3.org/2000/svg";
  const unlabelled = (data.unlabelled || []).map((score) => ({ score }));
  const all = data.positives.concat(data.negatives, unlabelled).map((p) => p.score).concat([data.cutoff]);
  const lo = Math.min(...all) - 0.02, hi = Math.max(...all) + 0.02;
  const W = 640, H = 140, BINS = 40;
  // a score axis under the bars: five ticks with their values
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const tick = document.createElementNS(NS, "text");
    tick.setAttribute("x", String(Math.min(W - 30, Math.max(2, (i * W) / 4 - 14))));
    tick.setAttribute("y", String(H + 16));
    tick.setAttribute("class", "tick");
    tick.textContent = v.toFixed(2);
    svg.appendChild(tick);
  }
  const x = (v) => ((v - lo) / (hi - lo)) * W;

  function bars(points, cls, offset) {
    const counts = new Array(BINS).fill(0);
    for (const p of points) counts[Math.min(BINS - 1, Math.floor(((p.score - lo) / (hi - lo)) * BINS))]++;
    const top = Math.max(1, ...counts);
    counts.forEach((c, i) => {
      if (!c) return;
      const r = document.createElementNS(NS, "rect");
      const h = (c / top) * (H - 10);
      r.setAttribute("x", String((i * W) / BINS + offset));
      r.setAttribute("width", String(W / BINS / 2 - 1));
      r.setAttribute("y", String(H - h));
      r.setAttribute("height", String(h));
      r.setAttribute("class", cls);
      svg.appendChild(r);
    });
  }
  if (unlabelled.length) bars(unlabelled, "unl", W / BINS / 4);
  bars(data.positives, "pos", W / BINS / 2);
  bars(data.negatives, "neg", 0);
  const now = document.createElementNS(NS, "line");  // the threshold in the file now
  now.setAttribute("x1", String(x(data.cutoff))); now.setAttribute("x2", String(x(data.cutoff)));
  now.setAttribute("y1", "0"); now.setAttribute("y2", String(H));
  now.setAttribute("class", "current");
  svg.appendChild(now);
  const line = document.createElementNS(NS, "line");
  line.setAttribute("y1", "0"); line.setAttribute("y2", String(H));
  line.setAttribute("class", "threshold");
  svg.appendChild(line);

  const fmt = (v) => (v === null ? "—" : v.toFixed(3));
  function update(value) {
    const t = Number(value);
    if (!Number.isFinite(t)) return;
    line.setAttribute("x1", String(x(t))); line.setAttribute("x2", String(x(t)));
    const m = precisionRecall(data, t);
    document.getElementById("precision").textContent = fmt(m.precision);
    document.getElementById("recall").textContent = fmt(m.recall);
    document.getElementById("tp").textContent = String(m.tp);
    document.getElementById("fp").textContent = String(m.fp);
    document.getElementById("queue").textContent = String(m.queue);
    countStored(t);
  }

  // the stored traffic: asked of the server (a count over every stored frame and the
  // backtest's temporal rule), once the slider has rested for a moment
  const live = document.getElementById("live");
  let asked = 0;
  const countStored = debounce(async (t) => {
    if (!live) return;
    const mine = ++asked;
    const figures = live.querySelectorAll(".live");
    const status = document.getElementById("live-status");
    figures.forEach((f) => f.classList.add("stale"));
    const response = await fetch(`${live.dataset.url}&threshold=${encodeURIComponent(t)}`);
    if (mine !== asked) return; // the slider has moved since: a newer answer is coming
    if (response.status === 202) { // the stored traffic is still being scored: ask again
      status.textContent = (await response.json()).preparing;
      setTimeout(() => { if (mine === asked) countStored(t); }, 1000);
      return;
    }
    if (!response.ok) { status.textContent = `could not count (${response.status})`; return; }
    const answer = await response.json();
    document.getElementById("stored-passing").textContent = String(answer.frames);
    document.getElementById("live-incidents").textContent = String(answer.incidents);
    live.dataset.threshold = String(answer.threshold);
    status.textContent = `at ${answer.threshold}`;
    figures.forEach((f) => f.classList.remove("stale"));
  }, 200);
  slider.addEventListener("input", () => { number.value = slider.value; update(slider.value); });
  number.addEventListener("input", () => { slider.value = number.value; update(number.value); });
  update(number.value);
}

// ------------------------------------------------------- tune a hash policy: distance slider
function setupHashTune() {
  const holder = document.getElementById("hash-tune-data");
  if (!holder) return;
  const data = JSON.parse(holder.textContent);
  const slider = document.getElementById("distance-slider");
  const number = document.getElementById("distance");
  const svg = document.getElementById("distance-histogram");
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 140, n = data.max + 1;
  const x = (d) => ((d + 0.5) / n) * W;
  const top = Math.max(1, ...data.histogram);
  data.histogram.forEach((c, d) => {
    if (!c) return;
    const r = document.createElementNS(NS, "rect");
    const h = Math.max(1, (c / top) * (H - 10));
    r.setAttribute("x", String((d * W) / n)); r.setAttribute("width", String(Math.max(1, W / n - 1)));
    r.setAttribute("y", String(H - h)); r.setAttribute("height", String(h));
    r.setAttribute("class", "unl");
    svg.appendChild(r);
  });
  for (let i = 0; i <= 4; i++) {
    const tick = document.createElementNS(NS, "text");
    const v = Math.round((data.max * i) / 4);
    tick.setAttribute("x", String(Math.min(W - 20, Math.max(2, x(v) - 6))));
    tick.setAttribute("y", String(H + 16)); tick.setAttribute("class", "tick");
    tick.textContent = String(v);
    svg.appendChild(tick);
  }
  const vline = (d, cls) => {
    const l = document.createElementNS(NS, "line");
    l.setAttribute("x1", String(x(d))); l.setAttribute("x2", String(x(d)));
    l.setAttribute("y1", "0"); l.setAttribute("y2", String(H)); l.setAttribute("class", cls);
    svg.appendChild(l);
    return l;
  };
  vline(data.cutoff, "current");
  const line = vline(data.cutoff, "threshold");
  const live = document.getElementById("hash-live");
  let asked = 0;
  const count = debounce(async (d) => {
    if (!live) return;
    const mine = ++asked;
    const figures = live.querySelectorAll(".live");
    const status = document.getElementById("hash-status");
    figures.forEach((f) => f.classList.add("stale"));
    const response = await fetch(`${live.dataset.url}?distance=${d}`);
    if (mine !== asked) return;
    if (response.status === 202) {
      status.textContent = (await response.json()).preparing;
      setTimeout(() => { if (mine === asked) count(d); }, 1000);
      return;
    }
    if (!response.ok) { status.textContent = `could not count (${response.status})`; return; }
    const answer = await response.json();
    document.getElementById("hash-matched").textContent = String(answer.frames);
    document.getElementById("hash-incidents").textContent = String(answer.incidents);
    status.textContent = `at ${answer.distance}`;
    figures.forEach((f) => f.classList.remove("stale"));
  }, 200);
  function update(value) {
    const d = Math.round(Number(value));
    if (!Number.isFinite(d) || d < 0 || d > data.max) return;
    line.setAttribute("x1", String(x(d))); line.setAttribute("x2", String(x(d)));
    document.getElementById("similarity").textContent = (1 - d / data.bits).toFixed(3);
    count(d);
  }
  slider.addEventListener("input", () => { number.value = slider.value; update(slider.value); });
  number.addEventListener("input", () => { slider.value = number.value; update(number.value); });
}

// ---------------------------------------------------------------- review: click to reveal
function setupBlur() {
  document.addEventListener("click", (event) => {
    const img = event.target.closest("img.blur, img.revealed");
    if (!img) return;
    img.classList.toggle("blur");
    img.classList.toggle("revealed");
  });
}

// ---------------------------------------------------- store answers still being prepared
// A page shown before its stored-traffic part was ready says how far the work has got and
// reloads itself once what it waits for is no longer being prepared.
function setupPreparing() {
  const line = document.getElementById("preparing");
  if (!line) return;
  const poll = async () => {
    try {
      const response = await fetch(line.dataset.preparing);
      const answer = await response.json();
      if (!answer.busy || !answer.status.includes(line.dataset.waitingFor)) { window.location.replace(window.location.href.replace(/[?&]queuing=1/, "")); return; }
      line.textContent = answer.status;
    } catch (e) { /* the server is busy or restarting: ask again */ }
    setTimeout(poll, 700);
  };
  setTimeout(poll, 700);
}

document.addEventListener("DOMContentLoaded", () => {
  setupPreparing();
  setupEditor();
  setupTry();
  setupTune();
  setupHashTune();
  setupBlur();
});
