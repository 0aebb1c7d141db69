// The dashboard: polls the control plane and draws with plain SVG (no libraries, no CDN).
// After each refresh it writes what it drew into data attributes of <body>
// (data-sequences-drawn, data-segments-drawn, data-points-drawn, data-streamers-drawn,
// data-refreshes), so a headless browser test can check the page really rendered.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
let refreshes = 0;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// A stable colour per image id: a hue from a string hash, so an image keeps its colour.
function colour(id) {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360}, 65%, 55%)`;
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 1e9) return (x / 1e9).toFixed(2) + "G";
  if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(2) + "M";
  if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + "k";
  return Number(x).toFixed(digits === undefined ? 1 : digits);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function drawCards(stats) {
  const minute = stats.throughput.last_minute;
  const cards = [
    ["packing efficiency (run)", fmt(100 * stats.packing_efficiency, 2) + "%"],
    ["delivered efficiency (run)", fmt(100 * stats.delivered_efficiency, 2) + "%"],
    ["delivered (last min)", fmt(100 * minute.delivered_efficiency, 2) + "%"],
    ["images/s", fmt(minute.images_per_s)],
    ["tokens/s", fmt(minute.tokens_per_s)],
    ["sequences/s", fmt(minute.sequences_per_s)],
    ["MB/s", fmt(minute.bytes_per_s / 1e6, 2)],
    ["images packed", fmt(stats.packing.images_packed, 0)],
    ["rejected", fmt(stats.packing.images_rejected, 0)],
    ["config version", String(stats.config_version)],
    // Everything this process's Flight server sent (batches with app_metadata, FlightInfo,
    // schemas, action results: the index to streamers too) against the delivered record
    // batches' Arrow bytes alone: with streamers a small share; without, it can pass 100%.
    ["bytes this process sent, against the delivered batches' bytes", stats.throughput.run.bytes
      ? fmt((100 * stats.coordinator_bytes_sent) / stats.throughput.run.bytes, 2) + "%" : "–"],
    ["starved trainers", String(stats.trainers_starved)],
  ];
  const root = document.getElementById("cards");
  root.innerHTML = "";
  for (const [k, v] of cards) {
    const card = document.createElement("div");
    card.className = "card";
    card.innerHTML = `<div class="v"></div><div class="k"></div>`;
    card.querySelector(".v").textContent = v;
    card.querySelector(".k").textContent = k;
    root.appendChild(card);
  }
  // What the service warns about: a config change predicted to lose packing efficiency,
  // and odd classes (split folders given as classes, no labels, one class for nearly all).
  const warnings = [stats.config_warning, ...(stats.class_warnings || [])].filter(Boolean);
  const box = document.getElementById("warnings");
  box.innerHTML = "";
  for (const text of warnings) {
    const line = document.createElement("div");
    line.textContent = "warning: " + text;
    box.appendChild(line);
  }
  document.body.dataset.warnings = warnings.length;
  document.getElementById("subtitle").textContent =
    `${stats.dataset} · ${stats.valid_images} images · up ${fmt(stats.uptime_s, 0)} s · ` +
    `${stats.streams.active} open streams`;
}

function drawLine(svg, points, key, label, maxValue) {
  clear(svg);
  const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
  const pad = { l: 48, r: 10, t: 20, b: 22 };
  el("text", { x: pad.l, y: 14, "font-size": 12 }, svg).textContent = label;
  if (points.length === 0) {
    el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", fill: "#999" }, svg).textContent =
      "no batches delivered yet";
    return 0;
  }
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const top = maxValue || Math.max(...points.map((p) => p[key]), 1e-9) * 1.1;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / top) * (h - pad.t - pad.b);
  el("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#bbb" }, svg);
  el("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, stroke: "#bbb" }, svg);
  el("text", { x: pad.l - 4, y: pad.t + 4, "text-anchor": "end", "font-size": 10 }, svg)
    .textContent = fmt(top, 2);
  el("text", { x: pad.l - 4, y: h - pad.b, "text-anchor": "end", "font-size": 10 }, svg)
    .textContent = "0";
  el("text", { x: w - pad.r, y: h - 6, "text-anchor": "end", "font-size": 10 }, svg)
    .textContent = `last ${fmt(t1 - t0, 0)} s`;
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
  el("path", { d: d.join(" "), fill: "none", stroke: "#2a6fdb", "stroke-width": 2 }, svg);
  for (const p of points) el("circle", { cx: x(p.t), cy: y(p[key]), r: 2, fill: "#2a6fdb" }, svg);
  return points.length;
}

function drawSequences(sequences) {
  const svg = document.getElementById("sequences");
  clear(svg);
  const width = Number(svg.getAttribute("width"));
  const rowH = 22, gap = 6, labelW = 190, top = 4;
  svg.setAttribute("height", Math.max(40, top + sequences.length * (rowH + gap)));
  if (sequences.length === 0) {
    el("text", { x: 10, y: 24, fill: "#999" }, svg).textContent = "no sequences delivered yet";
    return [0, 0];
  }
  let segments = 0;
  sequences.forEach((seq, i) => {
    const y = top + i * (rowH + gap);
    const scale = (width - labelW - 10) / seq.seq_len;
    const row = el("g", { class: "sequence", "data-seq-len": seq.seq_len }, svg);
    el("text", { x: 4, y: y + 15, "font-size": 11 }, row).textContent =
      `e${seq.epoch} r${seq.rank} b${seq.batch}.${seq.row} v${seq.config_version} ` +
      `${fmt((100 * seq.real_tokens) / seq.seq_len, 1)}%`;
    // Padding first, as the whole row in grey; images are drawn over it.
    el("rect", { x: labelW, y, width: seq.seq_len * scale, height: rowH, fill: "#ccc",
                 class: "padding" }, row);
    for (const s of seq.segments) {
      const rect = el("rect", {
        x: labelW + s.start * scale, y, width: Math.max(s.length * scale, 0.5), height: rowH,
        fill: colour(s.image_id), stroke: "#fff", "stroke-width": 0.5, class: "segment",
      }, row);
      el("title", {}, rect).textContent =
        `${s.image_id} (label ${s.label}): ${s.length} tokens at ${s.start}`;
      segments++;
    }
  });
  return [sequences.length, segments];
}

function drawTable(id, rows, cells) {
  const body = document.querySelector(`#${id} tbody`);
  body.innerHTML = "";
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const [value, warn] of cells(r)) {
      const td = document.createElement("td");
      td.textContent = value;
      if (warn) td.className = "warn";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const [stats, timeline, recent] = await Promise.all([
      getJSON("/stats"), getJSON("/stats/timeline?limit=300"), getJSON("/sequences/recent?limit=12"),
    ]);
    drawCards(stats);
    const pointsEff = drawLine(document.getElementById("chart-efficiency"), timeline.points,
                               "delivered_efficiency",
                               "delivered efficiency (real / every token sent) per second", 1.0);
    drawLine(document.getElementById("chart-throughput"), timeline.points, "images_per_s",
             "images per second");
    const [drawn, segments] = drawSequences(recent.sequences);
    drawTable("ranks", stats.ranks, (r) => [
      [r.rank], [r.world_size], [r.epoch], [r.next_batch], [r.batches_sent],
      [r.lag_batches === null ? `${r.lag_epochs} ep` : r.lag_batches, r.lag_batches > 4],
      [r.in_flight], [r.connected ? "yes" : "no"],
    ]);
    drawTable("streamers", stats.streamers, (s) => [
      [s.streamer], [s.state, s.state !== "up"], [s.node], [s.ranks.join(" ")],
      [fmt(s.images_per_s)], [fmt(s.bytes_per_s / 1e6, 2)], [s.restarts, s.restarts > 0],
    ]);
    drawTable("trainers", stats.trainers, (t) => [
      [t.rank], [t.step], [fmt(t.step_time_s, 3)], [fmt(t.data_wait_s, 3)],
      [fmt(100 * t.data_wait_fraction, 1) + "%", t.starved], [t.starved ? "yes" : "no", t.starved],
    ]);
    refreshes++;
    const body = document.body.dataset;
    body.sequencesDrawn = drawn;
    body.segmentsDrawn = segments;
    body.pointsDrawn = pointsEff;
    body.streamersDrawn = stats.streamers.length;
    body.refreshes = refreshes;
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = `refresh failed: ${error.message}`;
    document.body.dataset.error = error.message;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
