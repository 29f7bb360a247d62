// The coverage map served at / (ingest/api/map.py). Everything it shows comes from this API:
// GET v1/epochs (the picker), GET v1/coverage?epoch=n (hexagons, device markers), GET v1/devices/{id}
// (the device view; a 404 is shown as such, with the device's cells from the coverage).
// Bundled with Leaflet by build.js into ../static/ (committed). `window.depinMap` exposes what is on
// the map for tests/integration/test_map.py.
import L from "leaflet";
import "leaflet/dist/leaflet.css";
import "./style.css";

const config = JSON.parse(document.getElementById("map-config").textContent || "{}");
const REFRESH_MS = 15000; // the open epoch's coverage is redrawn this often
const PALETTE = ["#fde725", "#7ad151", "#22a884", "#2a788e", "#414487", "#440154"]; // viridis, low → high
const NO_VALUE = "#b8b8b8";
const HEX64 = /^(0x)?[0-9a-fA-F]{64}$/;

const state = {
  ready: false, // the first coverage is drawn
  epoch: null,
  status: null,
  metric: "readings",
  cells: 0, // hexagons drawn
  totalCells: 0, // covered cells in all (the answer may be truncated)
  devices: 0, // device markers drawn
  loads: 0, // coverage answers drawn so far
  error: null,
  device: null, // the device whose view is open
  deviceView: null, // {status, body} of GET v1/devices/{id}
  deviceCells: [], // that device's cells in the coverage shown
};
window.depinMap = state;

const $ = (id) => document.getElementById(id);
const epochSelect = $("epoch");
const metricSelect = $("metric");
const statusLine = $("status");
const panel = $("panel");

const map = L.map("map", { worldCopyJump: true, minZoom: 2, zoomSnap: 0.5 }).setView([20, 0], 2);
map.attributionControl.setPrefix("Leaflet");
if (config.tilesUrl) {
  L.tileLayer(config.tilesUrl, { attribution: config.tilesAttribution || "", maxZoom: 19 }).addTo(map);
}
let coverage = null; // the FeatureCollection shown
let scale = null;
const cellLayer = L.geoJSON(null, {
  className: "depin-cell",
  style: (f) => ({ color: "#333", weight: 0.6, fillOpacity: 0.65, fillColor: colour(f.properties) }),
  onEachFeature: (f, layer) => {
    layer.bindTooltip(() => cellTooltip(f.properties), { sticky: true });
    layer.on("click", () => showCell(f.properties));
  },
}).addTo(map);
const markerLayer = L.layerGroup().addTo(map);
const highlightLayer = L.geoJSON(null, {
  className: "depin-highlight",
  style: { color: "#e4002b", weight: 3, fill: false },
  interactive: false,
}).addTo(map);

// --- values and colours -----------------------------------------------------------------------------

function metricValue(p, metric) {
  if (metric === "readings") return p.readings;
  if (metric === "freshness") return p.freshness_ms;
  return p.reward === null ? null : Number(p.reward);
}

function makeScale(features, metric) {
  const values = features.map((f) => metricValue(f.properties, metric)).filter((v) => v !== null);
  if (!values.length) return null;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  // Counts and amounts spread over orders of magnitude: log bins. Freshness: linear, fresher = darker.
  const log = metric !== "freshness";
  const f = (v) => (log ? Math.log10(1 + Math.max(0, v)) : v);
  if (hi === lo) return { metric, lo, hi, bin: () => PALETTE.length - 1, edges: [[lo, hi]], single: true };
  if (metric === "readings" && hi - lo < PALETTE.length) {
    // A few distinct counts: one colour (and legend row) each.
    const bin = (v) => Math.round(((v - lo) / (hi - lo)) * (PALETTE.length - 1));
    const edges = Array.from({ length: hi - lo + 1 }, (_, i) => [lo + i, lo + i]);
    return { metric, lo, hi, bin, edges, single: false, discrete: true };
  }
  const span = f(hi) - f(lo);
  const bin = (v) => {
    const t = (f(v) - f(lo)) / span;
    const i = Math.min(PALETTE.length - 1, Math.floor(t * PALETTE.length));
    return metric === "freshness" ? PALETTE.length - 1 - i : i;
  };
  const inverse = (t) => (log ? 10 ** (f(lo) + t * span) - 1 : lo + t * span);
  const edges = PALETTE.map((_, i) => [inverse(i / PALETTE.length), inverse((i + 1) / PALETTE.length)]);
  return { metric, lo, hi, bin, edges, single: false };
}

function colour(p) {
  const v = metricValue(p, state.metric);
  if (v === null || !scale) return NO_VALUE;
  return PALETTE[scale.bin(v)];
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function tokens(units) {
  // Token base units (18 decimals) as tokens, for display only.
  if (units === null || units === undefined) return "–";
  const n = Number(units) / 1e18;
  return n >= 100 ? n.toFixed(0) : n.toPrecision(3);
}

function formatValue(metric, v) {
  if (metric === "readings") return Math.round(v).toLocaleString("en");
  if (metric === "freshness") return duration(v);
  return tokens(v);
}

function cellTooltip(p) {
  return (
    `cell ${p.cell}<br>${p.devices} device(s) · ${p.readings} readings<br>` +
    `newest ${duration(p.freshness_ms)} before ${state.status === "open" ? "now" : "the epoch's end"}` +
    `<br>reward ${p.reward === null ? "– (epoch open)" : tokens(p.reward) + " tokens"}`
  );
}

// --- legend -----------------------------------------------------------------------------------------

const legend = L.control({ position: "bottomright" });
legend.onAdd = () => {
  const div = L.DomUtil.create("div", "depin-legend");
  div.id = "legend";
  return div;
};
legend.addTo(map);

function drawLegend() {
  const div = $("legend");
  div.replaceChildren();
  const title = document.createElement("strong");
  const names = { readings: "readings", freshness: "freshness (newest reading)", reward: "reward (tokens)" };
  title.textContent = names[state.metric];
  div.append(title);
  const rows = [];
  if (scale && scale.single) {
    rows.push([PALETTE[PALETTE.length - 1], `${formatValue(state.metric, scale.lo)} (every cell)`]);
  } else if (scale && scale.discrete) {
    for (const [v] of scale.edges) rows.push([PALETTE[scale.bin(v)], formatValue(state.metric, v)]);
  } else if (scale) {
    const order = state.metric === "freshness" ? [...scale.edges.keys()].reverse() : [...scale.edges.keys()];
    for (const i of order) {
      const [a, b] = scale.edges[i];
      const colourIndex = state.metric === "freshness" ? PALETTE.length - 1 - i : i;
      rows.push([PALETTE[colourIndex], `${formatValue(state.metric, a)} – ${formatValue(state.metric, b)}`]);
    }
  }
  if (!scale || coverage.features.some((f) => metricValue(f.properties, state.metric) === null)) {
    rows.push([NO_VALUE, state.metric === "reward" ? "no reward yet (open epoch)" : "no value"]);
  }
  for (const [c, label] of rows) {
    const row = document.createElement("div");
    const swatch = document.createElement("i");
    swatch.style.background = c;
    row.append(swatch, document.createTextNode(label));
    div.append(row);
  }
}

// --- loading ----------------------------------------------------------------------------------------

async function getJSON(url) {
  const res = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  return { status: res.status, ok: res.ok, body };
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
  state.error = isError ? text : null;
}

async function loadEpochs() {
  const { ok, body } = await getJSON("v1/epochs?limit=200");
  if (!ok) throw new Error((body && body.error) || "cannot list epochs");
  const keep = epochSelect.value;
  epochSelect.replaceChildren();
  for (const e of body.epochs) {
    const opt = document.createElement("option");
    opt.value = String(e.epoch);
    const when = new Date(e.start_ms).toISOString().replace("T", " ").slice(0, 16);
    opt.textContent = `${e.epoch} · ${e.status}${e.covered ? "" : " · empty"} · ${when} UTC`;
    opt.dataset.status = e.status;
    epochSelect.append(opt);
  }
  if (keep && [...epochSelect.options].some((o) => o.value === keep)) {
    epochSelect.value = keep;
  } else {
    // First visit: the newest epoch with coverage (the open one unless it has none yet).
    const first = body.epochs.find((e) => e.covered);
    if (first) epochSelect.value = String(first.epoch);
  }
}

async function loadCoverage({ fit }) {
  const epoch = epochSelect.value;
  say(`loading epoch ${epoch}…`);
  const { ok, body } = await getJSON(`v1/coverage?epoch=${encodeURIComponent(epoch)}`);
  if (!ok) {
    say(`epoch ${epoch}: ${(body && body.error) || "coverage unavailable"}`, true);
    return;
  }
  if (epochSelect.value !== epoch) return; // the picker moved on meanwhile
  coverage = body;
  draw(fit);
  state.epoch = body.epoch;
  state.status = body.status;
  state.totalCells = body.cells;
  state.loads += 1;
  state.ready = true;
  const more = body.truncated ? ` (the ${body.features.length} most read of ${body.cells})` : "";
  say(`epoch ${body.epoch} (${body.status}): ${body.cells} cells${more}, ${state.devices} devices`);
  if (state.device) showDeviceCells(state.device, false);
}

function draw(fit) {
  scale = makeScale(coverage.features, state.metric);
  cellLayer.clearLayers();
  cellLayer.addData(coverage.features);
  state.cells = coverage.features.length;
  drawMarkers();
  drawLegend();
  if (fit && coverage.features.length) map.fitBounds(cellLayer.getBounds(), { padding: [30, 30], maxZoom: 14 });
}

function centroid(feature) {
  const ring = feature.geometry.coordinates[0].slice(0, -1);
  const lon = ring.reduce((s, p) => s + p[0], 0) / ring.length;
  const lat = ring.reduce((s, p) => s + p[1], 0) / ring.length;
  return [lat, lon];
}

function drawMarkers() {
  // One marker per device, at the centre of its most-read cell listed (features come most-read first).
  markerLayer.clearLayers();
  const placed = new Set();
  for (const f of coverage.features) {
    for (const id of f.properties.device_ids) {
      if (placed.has(id)) continue;
      placed.add(id);
      const m = L.circleMarker(centroid(f), {
        radius: 4,
        color: "#fff",
        weight: 1.5,
        fillColor: "#e4002b",
        fillOpacity: 1,
        className: "depin-device",
      });
      m.bindTooltip(`device ${id.slice(0, 8)}…`);
      m.on("click", () => openDevice(id));
      m.addTo(markerLayer);
    }
  }
  state.devices = placed.size;
}

// --- side panel: a cell, a device --------------------------------------------------------------------

function openPanel(title) {
  $("panel-title").textContent = title;
  const body = $("panel-body");
  body.replaceChildren();
  panel.hidden = false;
  return body;
}

function add(parent, tag, text, cls) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (cls) el.className = cls;
  parent.append(el);
  return el;
}

function table(parent, rows) {
  const t = add(parent, "table");
  for (const [k, v] of rows) {
    const tr = add(t, "tr");
    add(tr, "th", k);
    const td = add(tr, "td");
    if (v !== null && typeof v === "object") add(td, "pre", JSON.stringify(v, null, 1));
    else td.textContent = v === null || v === undefined ? "–" : String(v);
  }
  return t;
}

function showCell(p) {
  const body = openPanel(`Cell ${p.cell}`);
  panel.dataset.kind = "cell";
  table(body, [
    ["devices", p.devices],
    ["readings (unflagged)", p.readings],
    ["newest reading", p.newest_ms === null ? "–" : new Date(p.newest_ms).toISOString()],
    ["freshness", duration(p.freshness_ms)],
    ["reward", p.reward === null ? "– (epoch open)" : `${tokens(p.reward)} tokens (${p.reward} units)`],
  ]);
  add(body, "h3", "Devices");
  const list = add(body, "ul", undefined, "devices");
  for (const id of p.device_ids) {
    const a = add(add(list, "li"), "a", `${id.slice(0, 16)}…`);
    a.href = "#";
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      openDevice(id);
    });
  }
  if (p.devices > p.device_ids.length) add(body, "p", `and ${p.devices - p.device_ids.length} more`);
}

function showDeviceCells(id, fit) {
  const feats = coverage ? coverage.features.filter((f) => f.properties.device_ids.includes(id)) : [];
  state.deviceCells = feats.map((f) => f.properties.cell);
  highlightLayer.clearLayers();
  highlightLayer.addData(feats);
  if (fit && feats.length) map.fitBounds(highlightLayer.getBounds(), { padding: [60, 60], maxZoom: 13 });
  return feats;
}

async function openDevice(raw) {
  const id = raw.trim().replace(/^0x/, "").toLowerCase();
  if (!HEX64.test(id)) {
    const body = openPanel("Device");
    panel.dataset.kind = "device";
    panel.dataset.status = "invalid";
    add(body, "p", "A device id is 64 hex digits.", "error");
    return;
  }
  state.device = id;
  state.deviceView = null;
  const feats = showDeviceCells(id, true);
  const body = openPanel(`Device ${id.slice(0, 16)}…`);
  panel.dataset.kind = "device";
  panel.dataset.status = "loading";
  add(body, "p", id, "mono");
  add(body, "h3", `Epoch ${state.epoch}: ${feats.length} cell(s) in the coverage shown`);
  const cells = add(body, "ul", undefined, "cells");
  for (const f of feats) add(cells, "li", `${f.properties.cell} · ${f.properties.readings} readings (cell)`);
  const view = add(body, "section", undefined, "device-view");
  add(view, "h3", "Device view");
  const { status, body: answer } = await getJSON(`v1/devices/${id}`);
  if (state.device !== id) return;
  state.deviceView = { status, body: answer };
  panel.dataset.status = String(status);
  if (status === 200 && answer && typeof answer === "object") {
    table(view, Object.entries(answer));
  } else if (status === 404) {
    add(view, "p", `Not found: ${(answer && answer.error) || "no such device"}.`, "notice");
  } else {
    add(view, "p", `The device view is unavailable (HTTP ${status}).`, "error");
  }
}

// --- wiring -----------------------------------------------------------------------------------------

epochSelect.addEventListener("change", () => loadCoverage({ fit: true }));
metricSelect.addEventListener("change", () => {
  state.metric = metricSelect.value;
  if (coverage) draw(false);
});
$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  openDevice($("device").value);
});
$("panel-close").addEventListener("click", () => {
  panel.hidden = true;
  state.device = null;
  highlightLayer.clearLayers();
});

async function start() {
  try {
    await loadEpochs();
    await loadCoverage({ fit: true });
  } catch (err) {
    say(String(err.message || err), true);
  }
  setInterval(async () => {
    const selected = epochSelect.selectedOptions[0];
    if (!selected || selected.dataset.status !== "open") return;
    try {
      await loadEpochs();
      await loadCoverage({ fit: false });
    } catch (err) {
      say(String(err.message || err), true);
    }
  }, REFRESH_MS);
}

start();
