// The sensorstream dashboard: polls the worker's JSON views and redraws, no reloads.
// One module for the three pages; <body data-view> says which one this is.

const POLL_MS = 5000;
const UNITS = { temperature: "°C", humidity: "%", light: "lux", voltage: "V" };
const STATE_COLOURS = { ok: "#3fb27f", anomalous: "#e5534b", stale: "#8b949e" };
const PLOT_LAYOUT = {
  paper_bgcolor: "#171e26", plot_bgcolor: "#171e26",
  font: { color: "#d8dee6", size: 11, family: "system-ui, sans-serif" },
  margin: { l: 52, r: 16, t: 34, b: 36 }, showlegend: false,
  xaxis: { gridcolor: "#26313d", linecolor: "#26313d", type: "date" },
  yaxis: { gridcolor: "#26313d", linecolor: "#26313d", zeroline: false },
};
const PLOT_CONFIG = { displaylogo: false, responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d"] };

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${path}: ${response.status} ${body.error || ""}`.trim());
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toLocaleString("en", { maximumFractionDigits: 0 });
  return value.toLocaleString("en", { maximumFractionDigits: abs >= 100 ? 1 : digits });
}

function withUnit(metric, value) {
  return `${fmt(value)}${UNITS[metric] ? " " + UNITS[metric] : ""}`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function moteName(id) {
  return /^\d+$/.test(id) ? `Mote ${id}` : id;
}

// Runs `step` now and every POLL_MS; the header says when it last worked or why not.
function poll(step) {
  const status = document.getElementById("status");
  async function once() {
    try {
      const note = await step();
      status.className = "status";
      status.textContent = `live · updated ${new Date().toLocaleTimeString("en-GB")}` +
        (note ? ` · ${note}` : "");
    } catch (error) {
      status.className = "status error";
      status.textContent = `not updated: ${error.message}`;
    }
    setTimeout(once, POLL_MS);
  }
  once();
}

function unreachableNote(body) {
  const missing = body.unreachable_workers || [];
  return missing.length ? `no answer from ${missing.join(", ")}` : "";
}

// -- fleet ------------------------------------------------------------------------

function tile(sensor) {
  const values = el("dl");
  for (const metric of Object.keys(sensor.values).sort()) {
    values.append(el("dt", {}, metric), el("dd", { "data-metric": metric },
      withUnit(metric, sensor.values[metric])));
  }
  const health = sensor.health_pct;
  return el("a", { class: `tile ${sensor.state}`, href: `/dashboard/sensors/${encodeURIComponent(sensor.sensor_id)}`,
                   "data-sensor": sensor.sensor_id, "data-state": sensor.state },
    el("div", { class: "head" }, el("span", { class: "name" }, moteName(sensor.sensor_id)),
      el("span", { class: "state" }, sensor.state)),
    values,
    el("div", { class: "foot" },
      el("span", { title: "today's completeness" }, `health ${health === null ? "–" : fmt(health, 0) + " %"}`),
      el("span", { title: `last reading ${sensor.last_seen}` }, age(sensor.freshness_s))),
    el("div", { class: "health" }, el("span", { style: `width:${health ?? 0}%` })));
}

async function fleetStep() {
  const body = await getJSON("/fleet");
  const text = (id, value) => { document.getElementById(id).textContent = value; };
  text("kpi-sensors", body.count);
  text("kpi-states", ["ok", "anomalous", "stale"]
    .map((s) => `${body.states[s] || 0} ${s}`).join(" · "));
  for (const name of ["input", "dead_letter", "late"]) text(`kpi-${name}`, fmt(body.rates[name]));
  text("kpi-lag", fmt(body.lag, 0));
  text("kpi-workers", body.workers.length);
  text("kpi-unreachable", (body.unreachable_workers || []).length
    ? `${body.unreachable_workers.length} not answering` : "all answering");
  const grid = document.getElementById("grid");
  grid.replaceChildren(...(body.sensors.length ? body.sensors.map(tile)
    : [el("div", { class: "empty" }, "no sensors yet: waiting for readings")]));
  return unreachableNote(body);
}

// -- sensor -----------------------------------------------------------------------

function sensorId() {
  return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
}

let windowLabel = "1m";

function metricTraces(metric, windows, anomalies) {
  const x = [], mean = [], lo = [], hi = [], p95 = [];
  for (const w of windows) {
    const m = w.metrics[metric];
    if (!m || m.count === 0) continue;
    x.push(w.start); mean.push(m.mean); lo.push(m.min); hi.push(m.max); p95.push(m.p95);
  }
  // markers only within the charted windows, so old events do not stretch the axis
  const first = x.length ? Date.parse(x[0]) : Infinity;
  const mine = anomalies.filter((a) => a.metric === metric && a.value !== null &&
    Date.parse(a.ts) >= first);
  return [
    { x, y: hi, type: "scatter", mode: "lines", line: { width: 0 }, name: "max",
      hoverinfo: "skip" },
    { x, y: lo, type: "scatter", mode: "lines", line: { width: 0 }, fill: "tonexty",
      fillcolor: "rgba(78,161,255,0.22)", name: "min", hoverinfo: "skip" },
    { x, y: mean, type: "scatter", mode: "lines", line: { color: "#4ea1ff", width: 2 },
      name: "mean" },
    { x, y: p95, type: "scatter", mode: "lines", line: { color: "#f0b541", width: 1.5, dash: "dash" },
      name: "p95" },
    { x: mine.map((a) => a.ts), y: mine.map((a) => a.value), type: "scatter", mode: "markers",
      marker: { symbol: "x", size: 10, color: "#e5534b", line: { width: 2, color: "#e5534b" } },
      name: "anomaly", text: mine.map((a) => `${a.detector} (${a.severity})`) },
  ];
}

function chart(metric, windows, anomalies, baseline) {
  const id = `chart-${metric}`;
  let node = document.getElementById(id);
  if (!node) {
    node = el("div", { class: "chart", id, "data-metric": metric });
    document.getElementById("charts").append(node);
  }
  const expected = baseline && baseline.expected;
  const layout = { ...PLOT_LAYOUT,
    title: { text: `${metric}${UNITS[metric] ? " (" + UNITS[metric] + ")" : ""} · ${windowLabel} windows`,
             x: 0.01, font: { size: 13 } },
    shapes: expected ? [{ type: "rect", xref: "paper", x0: 0, x1: 1, y0: expected[0],
      y1: expected[1], fillcolor: "rgba(63,178,127,0.10)", layer: "below",
      line: { color: "rgba(63,178,127,0.6)", width: 1, dash: "dot" } }] : [],
  };
  Plotly.react(node, metricTraces(metric, windows, anomalies), layout, PLOT_CONFIG);
}

function anomalyRows(anomalies) {
  const body = document.getElementById("anomalies");
  if (!anomalies.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "none kept")));
    return;
  }
  body.replaceChildren(...anomalies.map((a) => el("tr", {},
    el("td", {}, a.ts.replace("T", " ").slice(0, 19)), el("td", {}, a.metric || "–"),
    el("td", {}, a.detector), el("td", {}, el("span", { class: `sev ${a.severity}` }, a.severity)),
    el("td", {}, fmt(a.value)),
    el("td", {}, a.expected ? `${fmt(a.expected[0])} – ${fmt(a.expected[1])}` : "–"),
    el("td", {}, a.reason))));
}

async function sensorStep() {
  const id = encodeURIComponent(sensorId());
  const [sensor, aggregates, baselines, anomalies] = await Promise.all([
    getJSON(`/sensors/${id}`),
    getJSON(`/sensors/${id}/aggregates?window=${windowLabel}`),
    getJSON(`/sensors/${id}/baselines`),
    getJSON(`/anomalies?sensor_id=${id}&limit=50`),
  ]);
  document.getElementById("last-seen").textContent = `last reading ${sensor.last_seen}`;
  document.getElementById("latest").replaceChildren(...Object.entries(sensor.metrics).map(
    ([metric, m]) => el("div", { "data-metric": metric }, el("span", { class: "sub" }, metric),
      el("b", {}, withUnit(metric, m.value)))));
  const byMetric = Object.fromEntries(baselines.baselines.map((b) => [b.metric, b]));
  for (const metric of Object.keys(sensor.metrics).sort()) {
    chart(metric, aggregates.windows, anomalies.anomalies, byMetric[metric]);
  }
  anomalyRows(anomalies.anomalies);
  return unreachableNote(anomalies);
}

function sensorPage() {
  const name = moteName(sensorId());
  document.getElementById("title").textContent = name;
  document.getElementById("crumb").textContent = name;
  document.title = `${name} · sensorstream`;
  const buttons = document.querySelectorAll(".windows button");
  for (const button of buttons) {
    button.addEventListener("click", () => {
      windowLabel = button.dataset.window;
      buttons.forEach((b) => b.classList.toggle("on", b === button));
      sensorStep().catch(() => {});  // the next poll reports a failure
    });
  }
  poll(sensorStep);
}

// -- lab map ----------------------------------------------------------------------

const LAB = { width: 41, depth: 32, zoneWidth: 10.25, zoneDepth: 16 };

function labShapes() {
  const line = { color: "#26313d", width: 1 };
  const shapes = [{ type: "rect", x0: 0, y0: 0, x1: LAB.width, y1: LAB.depth,
                    line: { color: "#3a4756", width: 2 } }];
  for (let x = LAB.zoneWidth; x < LAB.width; x += LAB.zoneWidth) {
    shapes.push({ type: "line", x0: x, x1: x, y0: 0, y1: LAB.depth, line: { ...line, dash: "dot" } });
  }
  shapes.push({ type: "line", x0: 0, x1: LAB.width, y0: LAB.zoneDepth, y1: LAB.zoneDepth,
                line: { ...line, dash: "dot" } });
  return shapes;
}

// The 5th and 95th percentiles: one faulty mote (a battery fault reads 120 °C) must not
// wash out the colours of the others; it saturates instead.
function colourRange(values) {
  const sorted = values.filter((v) => v !== null).sort((a, b) => a - b);
  if (!sorted.length) return [0, 1];
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const [lo, hi] = [at(0.05), at(0.95)];
  return lo < hi ? [lo, hi] : [lo - 1, hi + 1];
}

// Inverse-distance-weighted values on a 1 m grid of the lab, from the motes not stale.
function heat(points) {
  const xs = [], ys = [], z = [];
  for (let x = 0; x <= LAB.width; x += 1) xs.push(x);
  for (let y = 0; y <= LAB.depth; y += 1) ys.push(y);
  for (const y of ys) {
    z.push(xs.map((x) => {
      let num = 0, den = 0;
      for (const [px, py, v] of points) {
        const d2 = (px - x) ** 2 + (py - y) ** 2;
        if (d2 < 1e-6) return v;
        num += v / d2; den += 1 / d2;
      }
      return den ? num / den : null;
    }));
  }
  return { xs, ys, z };
}

async function labStep() {
  const body = await getJSON("/fleet");
  const select = document.getElementById("metric");
  const metrics = [...new Set(body.sensors.flatMap((s) => Object.keys(s.values)))].sort();
  if (select.options.length !== metrics.length) {
    const chosen = select.value || (metrics.includes("temperature") ? "temperature" : metrics[0]);
    select.replaceChildren(...metrics.map((m) => el("option", { value: m }, m)));
    if (chosen) select.value = chosen;
  }
  const metric = select.value;
  const placed = body.sensors.filter((s) => s.position);
  const value = (s) => (s.values[metric] ?? null);
  const [cmin, cmax] = colourRange(placed.map(value));
  const grid = heat(placed.filter((s) => s.state !== "stale" && value(s) !== null)
    .map((s) => [s.position[0], s.position[1], value(s)]));
  const surface = { x: grid.xs, y: grid.ys, z: grid.z, type: "heatmap", zsmooth: "best",
    coloraxis: "coloraxis", opacity: 0.85, hoverinfo: "skip" };
  const motes = {
    x: placed.map((s) => s.position[0]), y: placed.map((s) => s.position[1]),
    customdata: placed.map((s) => s.sensor_id),
    text: placed.map((s) => s.sensor_id), type: "scatter", mode: "markers+text",
    textposition: "middle center", textfont: { size: 9, color: "#0f1419" },
    hovertext: placed.map((s) => `${moteName(s.sensor_id)}: ${withUnit(metric, value(s))} · ${s.state}`),
    hoverinfo: "text",
    marker: { size: 22, color: placed.map(value), coloraxis: "coloraxis",
              line: { width: placed.map((s) => (s.state === "ok" ? 1 : 3.5)),
                      color: placed.map((s) => (s.state === "ok" ? "#0f1419" : STATE_COLOURS[s.state])) } },
  };
  const layout = { ...PLOT_LAYOUT, margin: { l: 50, r: 20, t: 10, b: 40 },
    coloraxis: { cmin, cmax, colorscale: metric === "temperature" ? "RdBu" : "Viridis",
                 colorbar: { title: { text: UNITS[metric] || metric }, outlinewidth: 0 } },
    xaxis: { ...PLOT_LAYOUT.xaxis, type: "linear", range: [-1, LAB.width + 1],
             constrain: "domain", title: { text: "x (m)" } },
    yaxis: { ...PLOT_LAYOUT.yaxis, range: [-1, LAB.depth + 1], scaleanchor: "x",
             constrain: "domain", title: { text: "y (m)" } },
    shapes: labShapes() };
  const map = document.getElementById("map");
  await Plotly.react(map, [surface, motes], layout, PLOT_CONFIG);
  if (!map.dataset.bound) {
    map.dataset.bound = "1";
    map.on("plotly_click", (event) => {
      const point = event.points.find((p) => p.customdata !== undefined);
      if (point) location.href = `/dashboard/sensors/${encodeURIComponent(point.customdata)}`;
    });
    select.addEventListener("change", () => labStep().catch(() => {}));
  }
  return `${placed.length} of ${body.sensors.length} sensors placed` +
    (unreachableNote(body) ? ` · ${unreachableNote(body)}` : "");
}

const view = document.body.dataset.view;
if (view === "fleet") poll(fleetStep);
else if (view === "sensor") sensorPage();
else if (view === "lab") poll(labStep);
