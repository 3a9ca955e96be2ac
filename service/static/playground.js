// The playground: one intent, two strategies side by side, through the public API (GET /info, POST /fanout).
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const ROW_CHIPS = 4;  // items shown per fan-out row (its nearest returned items, by rank); the rest are counted
const PLURAL = { category: "categories" };
const colour = (i) => PALETTE[i % PALETTE.length];
const $ = (id) => document.getElementById(id);

// An element with attributes and children; strings become text nodes, so nothing is parsed as HTML.
function make(ns, tag, attrs, children) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}
const el = (tag, attrs = {}, ...children) => make(null, tag, attrs, children);
const svg = (tag, attrs = {}, ...children) => make("http://www.w3.org/2000/svg", tag, attrs, children);

// The fan-out vector that ranked an item highest (its colour and its row).
function bestFinder(item) {
  return item.found_by.reduce((best, f) => (f[1] < best[1] ? f : best))[0];
}

// A problem+json body as one line: its title and detail (the detail already names the offending fields).
function problemText(status, body) {
  return body && typeof body === "object" && body.detail ? `${body.title || status}: ${body.detail}` : `HTTP ${status}`;
}

async function loadInfo() {
  const response = await fetch("/info");
  const info = await response.json();
  if (!response.ok) throw new Error(problemText(response.status, info));
  const [a, b] = [$("strategy-a"), $("strategy-b")];
  for (const name of info.strategies) {
    a.append(el("option", { value: name }, name));
    b.append(el("option", { value: name }, name));
  }
  b.append(el("option", { value: "" }, "(none)"));
  a.value = info.default_strategy.name;
  b.value = info.strategies.find((s) => s !== a.value) || "";
  const graph = info.graph ? `graph ${info.graph.name} on ${info.graph.provider}` : "no fan-out graph";
  $("about").textContent = `${info.dataset}: ${info.items} items · ${graph} · default ${info.default_strategy.name}`
    + ` (${info.default_strategy.why})`;
}

function request(strategy) {
  const number = (id) => Number($(id).value);
  return { query: $("intent").value, strategy, k: number("k"), limit: number("limit"),
           limit_per_fanout: number("per"), seed: number("seed"), explain: true };
}

function drawMap(view, rows) {
  const { query, fanouts, items } = view.projection;
  const points = [query, ...fanouts, ...items];
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const W = 480, H = 260, pad = 14;
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * pad);
  const sy = (y) => H - pad - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * pad);
  const map = svg("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": "2-D PCA of the returned items, fan-out vectors and query" });
  items.forEach((p, i) => {
    map.append(svg("circle", { class: "item-dot", cx: sx(p[0]), cy: sy(p[1]), r: 4, fill: colour(rows[i]),
                               "fill-opacity": 0.75 }, svg("title", {}, view.texts[i])));
  });
  fanouts.forEach((p, k) => {
    const [x, y] = [sx(p[0]), sy(p[1])];
    map.append(svg("polygon", { class: "fanout-dot", points: `${x},${y - 7} ${x + 7},${y} ${x},${y + 7} ${x - 7},${y}`,
                                fill: colour(k), stroke: "#1d232a", "stroke-width": 1 },
                   svg("title", {}, `fan-out vector ${k}`)));
  });
  const [qx, qy] = [sx(query[0]), sy(query[1])];
  map.append(svg("path", { d: `M${qx - 6},${qy - 6}L${qx + 6},${qy + 6}M${qx - 6},${qy + 6}L${qx + 6},${qy - 6}`,
                           stroke: "#000", "stroke-width": 2.5 }, svg("title", {}, "the query")));
  return map;
}

function render(panel, strategy, body) {
  const view = body.view;
  const rowsOf = body.items.map(bestFinder);
  view.texts = body.items.map((it) => it.text);
  const groups = view.group_key ? [el("span", { class: "badge" }, `${view.distinct_groups} ${PLURAL[view.group_key] || view.group_key + "s"}`)] : [];
  const stats = el("div", { class: "stats" },
    el("span", { class: "badge" }, `${view.distinct_items} items`), ...groups,
    el("span", { class: "badge" }, `Vendi ${view.vendi.toFixed(2)}`),
    el("span", { class: "badge" }, `mean pairwise distance ${view.mean_pairwise_distance.toFixed(3)}`));
  const timings = el("div", { class: "timings" },
    ...Object.entries(body.timings).map(([stage, ms]) => el("span", { class: "badge" }, `${stage} ${ms.toFixed(1)} ms`)));

  const k = view.projection.fanouts.length;
  const rows = el("ol", { class: "rows", start: 0 });
  for (let v = 0; v < k; v++) {
    const found = body.items
      .map((it) => [it, it.found_by.find((f) => f[0] === v)])
      .filter(([, f]) => f)
      .sort((a, b) => a[1][1] - b[1][1]);
    const head = body.subqueries ? body.subqueries[v] : `vector ${v}`;
    rows.append(el("li", { class: "row", "data-vector": v },
      el("span", { class: "swatch", style: `background:${colour(v)}` }),
      el("span", { class: "row-head" }, head), " ",
      ...found.slice(0, ROW_CHIPS).map(([it, f]) => el("span", { class: "chip", title: `rank ${f[1]}` }, it.text)),
      ...(found.length > ROW_CHIPS ? [el("span", { class: "more" }, `+${found.length - ROW_CHIPS} more`)] : [])));
  }
  const fused = el("ol", { class: "fused" });
  body.items.forEach((it, i) => {
    fused.append(el("li", { class: "item", "data-id": it.id },
      el("span", { class: "swatch", style: `background:${colour(rowsOf[i])}` }), el("span", { class: "text" }, it.text),
      el("span", { class: "prov" }, it.found_by.map((f) => `v${f[0]}#${f[1]}`).join(" "))));
  });
  panel.replaceChildren(el("h2", {}, strategy), timings, stats, drawMap(view, rowsOf),
    el("h3", {}, `${k} fan-out ${k === 1 ? "row" : "rows"}`), rows,
    el("h3", {}, `fused result (${body.items.length})`), fused);
}

async function runOne(panel, strategy) {
  panel.dataset.strategy = strategy;
  panel.dataset.state = "loading";
  if (!strategy) {
    panel.replaceChildren();
    panel.dataset.state = "empty";
    return;
  }
  panel.replaceChildren(el("h2", {}, strategy), el("p", {}, "running…"));
  let status = 0, body = null;
  try {
    const response = await fetch("/fanout", { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(request(strategy)) });
    status = response.status;
    body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(problemText(status, body));
    render(panel, strategy, body);
    panel.dataset.state = "done";
  } catch (error) {
    panel.replaceChildren(el("h2", {}, strategy), el("div", { class: "error", role: "alert" }, error.message));
    panel.dataset.state = "error";
  }
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  runOne($("panel-a"), $("strategy-a").value);
  runOne($("panel-b"), $("strategy-b").value);
});

loadInfo().catch((error) => { $("about").textContent = `GET /info failed: ${error.message}`; });
