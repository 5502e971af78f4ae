// The trioscheduler dashboard: polls /api/v1/ about once a second and redraws. No build step, no library.
// Every value from the API is put in the page as text (textContent), never as HTML: clients choose some of them.
"use strict";

const POLL_MS = 1000;
const CHART_JOBS = 100;
const SVG_NS = "http://www.w3.org/2000/svg";
let selectedJob = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

// With authentication on, the API's reads need an admin token: open the page as /dashboard?token=… and every
// request carries it as a bearer token.
const ADMIN_TOKEN = new URLSearchParams(window.location.search).get("token");

async function getJson(path) {
  const headers = ADMIN_TOKEN ? { Authorization: `Bearer ${ADMIN_TOKEN}` } : {};
  const response = await fetch(path, { cache: "no-store", headers });
  const body = await response.json();
  if (!response.ok) {
    const given = body && body.error;
    const error = given && typeof given === "object" ? given : { code: String(response.status), message: given || "" };
    throw new Error(`${path}: ${error.code} ${error.message}`);
  }
  return body;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function shortId(id) {
  return el("span", { title: id }, id && id.length > 16 ? `${id.slice(0, 14)}…` : id);
}

function fmt(value, digits = 1) {
  return value == null ? "–" : Number(value).toFixed(digits);
}

// ---------------------------------------------------------------------------------------------- panels

function renderCards(stats, nodes, sessions) {
  setText("node-count", nodes.count);
  setText("pool-count", Object.keys(nodes.pools).length);
  setText("session-count", sessions.count);
  setText("job-count", `${stats.jobs.dispatched} / ${stats.jobs.waiting}`);
  setText("slot-count", `${stats.slots.in_flight} / ${stats.slots.capacity}`);
  setText("inbox-count", stats.inbox_pending);
}

function nodeRow(node) {
  const share = node.capacity ? Math.min(1, node.in_flight / node.capacity) : 0;
  const bar = el("div", { class: "bar" + (share >= 1 ? " full" : "") });
  const fill = el("div");
  fill.style.width = `${(share * 100).toFixed(0)}%`;
  bar.append(fill);
  return el("div", { class: "node", "data-node-id": node.node_id },
    el("span", {}, node.node_id), bar, el("span", {}, `${node.in_flight}/${node.capacity}`),
    el("span", { class: `state state-${node.state}` }, node.state));
}

function renderPools(nodes) {
  const byId = new Map(nodes.nodes.map((node) => [node.node_id, node]));
  const box = document.getElementById("pools");
  const groups = Object.entries(nodes.pools).sort(([a], [b]) => a.localeCompare(b));
  const pooled = new Set(groups.flatMap(([, members]) => members));
  const loose = nodes.nodes.filter((node) => !pooled.has(node.node_id)).map((node) => node.node_id);
  if (loose.length) groups.push(["(one-way directions only)", loose]);
  const parts = groups.map(([name, members]) => el("div", { class: "pool", "data-pool": name },
    el("div", { class: "pool-name" }, `${name} — ${members.length} node(s)`),
    ...members.filter((id) => byId.has(id)).map((id) => nodeRow(byId.get(id)))));
  box.replaceChildren(...(parts.length ? parts : [el("p", { class: "hint" }, "No node registered.")]));
}

function renderSessions(sessions) {
  const rows = sessions.sessions.map((s) => el("tr", { "data-session-id": s.session_id },
    el("td", {}, s.session_id), el("td", {}, `${s.src_lang} → ${s.tgt_lang}`), el("td", {}, s.next_index),
    el("td", {}, s.outcomes_pending), el("td", {}, s.buffered_bytes)));
  if (sessions.count > sessions.listed) {
    rows.push(el("tr", {}, el("td", { colSpan: 5, class: "hint" }, `… and ${sessions.count - sessions.listed} more`)));
  }
  document.querySelector("#sessions tbody").replaceChildren(...rows);
}

function jobRow(job) {
  const row = el("tr", { class: "job-row" + (job.job_id === selectedJob ? " selected" : ""), "data-job-id": job.job_id },
    el("td", {}, shortId(job.job_id)), el("td", {}, `${job.session_id} #${job.utterance_index}`),
    el("td", {}, `${job.src_lang} → ${job.tgt_lang}`), el("td", {}, job.node_id || "–"), el("td", {}, job.attempts),
    el("td", { class: `outcome-${job.outcome}` }, job.outcome + (job.code ? ` ${job.code}` : "")),
    el("td", {}, fmt(job.latency_ms)));
  row.addEventListener("click", () => selectJob(job.job_id));
  return row;
}

function renderJobs(jobs) {
  document.querySelector("#jobs tbody").replaceChildren(...jobs.jobs.map(jobRow));
}

function renderTrouble(stats, jobs) {
  const counters = Object.entries(stats.counters)
    .filter(([name, value]) => value && /^(job_timeouts|redispatches|nodes_lost_|results_dropped_|outcome_error_|node_quarantines|outcomes_undeliverable)/.test(name))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, value]) => el("span", {}, `${name} `, el("b", {}, value)));
  document.getElementById("trouble-counters").replaceChildren(
    ...(counters.length ? counters : [el("span", { class: "hint" }, "No failover or error so far.")]));
  const rows = jobs.jobs.filter((job) => job.attempts > 1 || job.outcome === "error" || job.outcome === "missing")
    .map((job) => {
      const row = el("tr", { class: "job-row", "data-job-id": job.job_id }, el("td", {}, shortId(job.job_id)),
        el("td", {}, job.node_id || "–"), el("td", {}, job.attempts),
        el("td", { class: `outcome-${job.outcome}` }, job.outcome), el("td", {}, job.code || ""));
      row.addEventListener("click", () => selectJob(job.job_id));
      return row;
    });
  document.querySelector("#trouble tbody").replaceChildren(...rows);
}

function renderChart(jobs) {
  const chart = document.getElementById("latency-chart");
  const points = jobs.jobs.filter((job) => job.latency_ms != null).slice(0, CHART_JOBS).reverse();
  const width = 600, height = 180, left = 40, bottom = 16, top = 8;
  const parts = [];
  const max = Math.max(1, ...points.map((job) => job.latency_ms));
  for (const share of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - share);
    parts.push(svg("line", { class: "grid", x1: left, x2: width, y1: y, y2: y }));
    const label = svg("text", { x: 2, y: y + 3 });
    label.textContent = (max * share).toFixed(0);
    parts.push(label);
  }
  const step = points.length > 1 ? (width - left - 4) / (points.length - 1) : 0;
  const xy = points.map((job, i) => [left + i * step, top + (height - top - bottom) * (1 - job.latency_ms / max)]);
  if (xy.length) {
    parts.push(svg("polyline", { class: "line", points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") }));
  }
  points.forEach((job, i) => {
    if (job.outcome !== "result") parts.push(svg("circle", { class: "dot-error", cx: xy[i][0], cy: xy[i][1], r: 3 }));
  });
  chart.replaceChildren(...parts);
  const sorted = points.map((job) => job.latency_ms).sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
  setText("latency-legend", `${points.length} jobs · median ${fmt(median)} ms · max ${fmt(sorted[sorted.length - 1])} ms`);
}

function renderTimeline(job) {
  setText("timeline-job", job.job_id);
  const attempts = job.attempt_list.map((a) => `attempt ${a.attempt}: ${a.job_id} on ${a.node_id}`).join(" · ");
  const rows = job.timeline.map((stage) => el("tr", { class: `stage stage-${stage.stage}`, "data-stage": stage.stage },
    el("td", {}, stage.stage), el("td", {}, new Date(stage.at_ms).toISOString().slice(11, 23)),
    el("td", {}, `+${fmt(stage.elapsed_ms)} ms`), el("td", {}, stage.attempt), el("td", {}, stage.job_id),
    el("td", {}, stage.node_id || "–"), el("td", {}, stage.fields ? JSON.stringify(stage.fields) : "")));
  const table = el("table", { id: "timeline-table" },
    el("thead", {}, el("tr", {}, ...["stage", "time (UTC)", "since finalized", "attempt", "job_id", "node", "details"]
      .map((title) => el("th", {}, title)))),
    el("tbody", {}, ...rows));
  document.getElementById("timeline").replaceChildren(
    el("p", {}, `${job.session_id} #${job.utterance_index} · ${job.src_lang} → ${job.tgt_lang} · `,
      el("span", { class: `outcome-${job.outcome}` }, job.outcome + (job.code ? ` ${job.code}` : "")),
      ` · latency ${fmt(job.latency_ms)} ms`),
    el("p", { class: "hint" }, attempts || "not dispatched"), table);
}

async function selectJob(jobId) {
  selectedJob = jobId;
  document.querySelectorAll("tr.job-row").forEach((row) =>
    row.classList.toggle("selected", row.getAttribute("data-job-id") === jobId));
  try {
    renderTimeline(await getJson(`/api/v1/jobs/${encodeURIComponent(jobId)}`));
  } catch (error) {
    document.getElementById("timeline").replaceChildren(el("p", { class: "hint" }, String(error.message)));
  }
}

// ---------------------------------------------------------------------------------------------- loop

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [stats, nodes, sessions, jobs] = await Promise.all([
      getJson("/api/v1/stats"), getJson("/api/v1/nodes"), getJson("/api/v1/sessions"), getJson("/api/v1/jobs?limit=100"),
    ]);
    renderCards(stats, nodes, sessions);
    renderPools(nodes);
    renderSessions(sessions);
    renderJobs(jobs);
    renderTrouble(stats, jobs);
    renderChart(jobs);
    if (selectedJob) await selectJob(selectedJob);
    status.textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    status.className = "status";
  } catch (error) {
    status.textContent = `API unreachable: ${error.message}`;
    status.className = "status down";
  }
  setTimeout(refresh, POLL_MS);
}

refresh();
