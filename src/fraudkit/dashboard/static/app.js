// fraudkit dashboard: fetches JSON and sets every value with textContent (never as markup).
"use strict";

const state = { refreshMs: 2000, reviews: false, filters: new URLSearchParams(), timer: null, open: null };
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const ratio = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
const percent = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(2) + "%");
const ms = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US") + " ms");
const time = (t) => (t === null || t === undefined ? "–" : new Date(t).toISOString().replace("T", " ").slice(0, 19));
const labelText = (l) => (l === 1 ? "fraud" : l === 0 ? "legit" : "–");

function reasonsText(reasons) {
  if (!Array.isArray(reasons) || reasons.length === 0) return "";
  return reasons
    .map((r) => (r && typeof r === "object" ? `${r.feature}=${typeof r.value === "number" ? r.value.toFixed(2) : r.value}` : String(r)))
    .join(", ");
}

function cell(row, text, number) {
  row.appendChild(el("td", text, number ? "number" : undefined));
}

function renderTotals(data) {
  const t = data.totals;
  $("total-verdicts").textContent = count(t.verdicts);
  $("total-flagged").textContent = count(t.flagged);
  $("fraud-rate").textContent = percent(t.fraud_rate);
  $("total-labelled").textContent = `${count(t.labelled)} (${count(t.labelled_fraud)} fraud)`;
  const e2e = data.latency_ms.end_to_end;
  $("latency").textContent = `${ms(e2e.p50)} / ${ms(e2e.p99)}`;
  const last = data.per_minute.length ? data.per_minute[data.per_minute.length - 1] : null;
  $("last-minute").textContent = last ? `${count(last.verdicts)} tx` : "–";
  $("database").textContent = data.database;
  $("updated").textContent = "updated " + time(data.generated_ms);
}

function renderPerMinute(points) {
  const svg = $("per-minute");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const peak = Math.max(1, ...points.map((p) => p.verdicts));
  const width = 600 / Math.max(points.length, 1);
  points.forEach((p, i) => {
    for (const [value, cls] of [[p.verdicts, "all"], [p.flagged, "flagged"]]) {
      const h = (110 * value) / peak;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(i * width + 1));
      rect.setAttribute("y", String(115 - h));
      rect.setAttribute("width", String(Math.max(width - 2, 1)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("class", cls);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${time(p.minute_ms)}: ${p.verdicts} tx, ${p.flagged} flagged`;
      rect.appendChild(title);
      svg.appendChild(rect);
    }
  });
}

function renderQuality(rows) {
  const body = $("quality").tBodies[0];
  body.replaceChildren();
  for (const q of rows) {
    const tr = el("tr");
    tr.dataset.modelVersion = q.model_version === null ? "" : q.model_version;
    cell(tr, q.model_version);
    cell(tr, ratio(q.precision), true);
    cell(tr, ratio(q.recall), true);
    for (const k of ["tp", "fp", "fn", "tn"]) cell(tr, count(q[k]), true);
    body.appendChild(tr);
  }
}

function renderModels(rows) {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const m of rows) {
    const tr = el("tr", null, m.current ? "current" : m.status === "rejected" ? "rejected" : undefined);
    cell(tr, m.version + (m.current ? " (current)" : ""));
    cell(tr, m.status);
    cell(tr, ratio(m.average_precision), true);
    cell(tr, ratio(m.threshold), true);
    cell(tr, m.created_at || "–");
    cell(tr, m.reason || "");
    body.appendChild(tr);
  }
}

function renderVerdicts(rows) {
  const body = $("verdicts").tBodies[0];
  body.replaceChildren();
  for (const v of rows) {
    const tr = el("tr");
    tr.dataset.transactionId = v.transaction_id;
    cell(tr, time(v.verdict_ms));
    cell(tr, v.transaction_id);
    cell(tr, v.card_id);
    cell(tr, v.terminal_id);
    cell(tr, v.amount === null ? "–" : `${v.amount.toFixed(2)} ${v.currency || ""}`.trim(), true);
    cell(tr, v.country);
    cell(tr, ratio(v.score), true);
    cell(tr, v.model_version);
    cell(tr, reasonsText(v.reasons));
    cell(tr, labelText(v.label));
    const td = el("td");
    const button = el("button", "open", "open-verdict");
    button.type = "button";
    button.addEventListener("click", () => openVerdict(v.transaction_id));
    td.appendChild(button);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const response = await fetch("/api/summary?" + state.filters.toString(), { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    renderTotals(data);
    renderPerMinute(data.per_minute);
    renderQuality(data.quality);
    renderModels(data.models);
    renderVerdicts(data.verdicts);
    $("load-error").textContent = "";
    document.body.dataset.loaded = String(data.generated_ms);
  } catch (error) {
    $("load-error").textContent = String(error.message || error);
  }
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, state.refreshMs);
}

async function openVerdict(transactionId) {
  const response = await fetch("/api/verdict?id=" + encodeURIComponent(transactionId), { cache: "no-store" });
  const v = await response.json();
  $("review-status").textContent = response.ok ? "" : v.error;
  delete $("review-status").dataset.outcome; // the previous review's outcome is not this verdict's
  if (!response.ok) return;
  state.open = v;
  $("review-id").textContent = v.transaction_id;
  const fields = $("review-fields");
  fields.replaceChildren();
  const shown = [
    ["decision", v.decision], ["score", ratio(v.score)], ["threshold", ratio(v.threshold)],
    ["model", v.model_version], ["card", v.card_id], ["terminal", v.terminal_id],
    ["amount", v.amount === null ? "–" : `${v.amount.toFixed(2)} ${v.currency || ""}`],
    ["country", v.country], ["merchant category", v.merchant_category],
    ["event time", time(v.event_time_ms)], ["verdict time", time(v.verdict_ms)],
    ["detector", v.detector], ["label", labelText(v.label)],
  ];
  for (const [name, value] of shown) {
    fields.appendChild(el("dt", name));
    fields.appendChild(el("dd", value === null || value === undefined ? "–" : value));
  }
  const reasons = $("review-reasons");
  reasons.replaceChildren();
  for (const r of v.reasons || []) {
    reasons.appendChild(el("li", r && typeof r === "object" ? `${r.feature} = ${r.value} (contribution ${r.contribution})` : String(r)));
  }
  $("review-controls").hidden = !state.reviews;
  $("review-disabled").hidden = state.reviews;
  $("review").showModal();
}

async function review(label) {
  if (!state.open) return;
  const status = $("review-status");
  status.textContent = "publishing…";
  delete status.dataset.outcome;
  try {
    const response = await fetch("/api/review", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Review-Token": $("review-token").value },
      body: JSON.stringify({ transaction_id: state.open.transaction_id, label: label }),
    });
    const data = await response.json();
    status.textContent = response.ok
      ? `label published to ${data.topic}: ${label === 1 ? "fraud confirmed" : "rejected as legitimate"}`
      : `not published: ${data.error}`;
    status.dataset.outcome = response.ok ? "published" : "refused";
  } catch (error) {
    status.textContent = `not published: ${error.message || error}`;
    status.dataset.outcome = "refused";
  }
}

function readFilters(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("filters"))) {
    if (String(value).trim() !== "") params.set(name, String(value).trim());
  }
  state.filters = params;
  refresh();
}

async function start() {
  try {
    const settings = await (await fetch("/api/settings", { cache: "no-store" })).json();
    state.refreshMs = Math.max(250, 1000 * settings.refresh_s);
    state.reviews = Boolean(settings.reviews);
  } catch (error) {
    $("load-error").textContent = String(error.message || error);
  }
  $("filters").addEventListener("submit", readFilters);
  $("clear-filters").addEventListener("click", () => { $("filters").reset(); readFilters(); });
  $("confirm-fraud").addEventListener("click", () => review(1));
  $("reject-fraud").addEventListener("click", () => review(0));
  $("review-close").addEventListener("click", () => $("review").close());
  await refresh();
  schedule();
}

document.addEventListener("DOMContentLoaded", start);
