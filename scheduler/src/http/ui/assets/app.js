// flotilla's dashboard: keeps the server-rendered page current from the
// event stream, signs in with an API token, sends the buttons' API calls,
// draws the utilisation charts and tails a replica's log. No framework:
// the server renders the truth, this script only asks for it again.
"use strict";

const TOKEN_KEY = "flotilla_token";
const CHART_WINDOW_MS = 5 * 60 * 1000;
const LOG_LINES = 100;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function signIn(form) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, value);
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${TOKEN_KEY}=${value}; path=/; SameSite=Strict${secure}`;
    location.reload();
  });
}

function notice(text, failed) {
  let box = document.getElementById("notice");
  if (!box) {
    box = document.createElement("div");
    box.id = "notice";
    document.body.appendChild(box);
  }
  box.textContent = text;
  box.className = failed ? "failed" : "";
}

async function errorText(response) {
  const text = await response.text();
  try {
    return JSON.parse(text).message || text;
  } catch (_) {
    return text || response.statusText;
  }
}

// ---- live refresh -------------------------------------------------------

let refreshing = false;
let refreshAgain = false;

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    const response = await fetch(location.pathname, { cache: "no-store" });
    if (response.status === 401) {
      location.reload();
      return;
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    const main = document.getElementById("main");
    if (fresh && main) {
      main.innerHTML = fresh.innerHTML;
      main.dataset.index = fresh.dataset.index;
      hydrate();
    }
  } catch (error) {
    notice(`could not refresh: ${error}`, true);
  } finally {
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      refresh();
    }
  }
}

function follow() {
  const main = document.getElementById("main");
  if (!main || typeof EventSource === "undefined") return;
  const live = document.getElementById("live");
  const rendered = Number(main.dataset.index || 0);
  const stream = new EventSource(`/v1/events/stream?index=${rendered}`);
  stream.addEventListener("open", () => live && live.classList.add("on"));
  stream.addEventListener("error", () => live && live.classList.remove("on"));
  stream.addEventListener("applied", (event) => {
    const index = Number(JSON.parse(event.data).index);
    if (index > Number(main.dataset.index || 0)) refresh();
  });
}

// ---- actions --------------------------------------------------------------

function actions() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.action");
    if (!button) return;
    button.disabled = true;
    const headers = { "content-type": "application/json" };
    if (token()) headers.authorization = `Bearer ${token()}`;
    try {
      const response = await fetch(button.dataset.path, {
        method: button.dataset.method,
        headers,
        body: button.dataset.body,
      });
      if (response.ok) {
        notice(`${button.textContent}: done`, false);
        refresh();
      } else {
        notice(`${button.textContent} failed: ${await errorText(response)}`, true);
      }
    } catch (error) {
      notice(`${button.textContent} failed: ${error}`, true);
    } finally {
      button.disabled = false;
    }
  });
}

// ---- charts ---------------------------------------------------------------

const series = { cpu: new Map(), memory: new Map() };
let polling = null;

async function sample(workload) {
  const response = await fetch(`/v1/workloads/${workload}/utilisation`, { cache: "no-store" });
  if (!response.ok) return;
  const now = Date.now();
  const body = await response.json();
  for (const replica of body.replicas || []) {
    for (const [resource, value] of [["cpu", replica.cpu_percent], ["memory", replica.memory_percent]]) {
      const key = `#${replica.replica} (${replica.id})`;
      const points = series[resource].get(key) || [];
      points.push([now, value]);
      while (points.length && points[0][0] < now - CHART_WINDOW_MS) points.shift();
      series[resource].set(key, points);
    }
  }
  drawCharts();
}

function hue(text) {
  let h = 2166136261;
  for (const c of text) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return h % 360;
}

function drawCharts() {
  const holder = document.querySelector(".charts");
  if (!holder) return;
  const marks = (holder.dataset.marks || "").split(",").filter(Boolean).map(Number);
  const now = Date.now();
  const [w, h] = [480, 160];
  const x = (t) => ((t - (now - CHART_WINDOW_MS)) / CHART_WINDOW_MS) * w;
  for (const figure of holder.querySelectorAll("figure.chart")) {
    const resource = figure.dataset.resource;
    const target = Number(figure.dataset.target || 0);
    let top = Math.max(100, target * 1.25);
    for (const points of series[resource].values()) for (const [, v] of points) top = Math.max(top, v * 1.1);
    const y = (v) => h - (v / top) * h;
    let svg = `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="${resource} use">`;
    svg += `<rect class="frame" x="0" y="0" width="${w}" height="${h}"/>`;
    if (target) svg += `<line class="target" x1="0" x2="${w}" y1="${y(target)}" y2="${y(target)}"><title>autoscale target ${target}%</title></line>`;
    for (const at of marks) {
      if (at < now - CHART_WINDOW_MS) continue;
      svg += `<line class="mark" x1="${x(at)}" x2="${x(at)}" y1="0" y2="${h}"><title>autoscaled</title></line>`;
    }
    let legend = "";
    for (const [key, points] of series[resource]) {
      const colour = `hsl(${hue(key)},60%,45%)`;
      const path = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      svg += `<polyline fill="none" stroke="${colour}" stroke-width="1.5" points="${path}"/>`;
      const last = points.length ? points[points.length - 1][1].toFixed(0) : "?";
      legend += `<span style="color:${colour}">${key} ${last}%</span> `;
    }
    svg += `<text x="4" y="12">${top.toFixed(0)}%</text></svg>`;
    const caption = figure.querySelector("figcaption");
    figure.innerHTML = svg + `<div class="legend">${legend}</div>`;
    if (caption) figure.prepend(caption);
  }
}

// ---- log tail -------------------------------------------------------------

const logs = new Map();

async function tailLog(pre) {
  const id = pre.dataset.logs;
  const known = logs.get(id);
  if (known) pre.textContent = known.text;
  if (known && Date.now() - known.at < 3000) return;
  const response = await fetch(`/v1/allocations/${id}/logs`, { cache: "no-store" });
  const text = response.ok
    ? (await response.text()).split("\n").slice(-LOG_LINES).join("\n")
    : `cannot read the log: ${await errorText(response)}`;
  logs.set(id, { text, at: Date.now() });
  pre.textContent = text;
}

// ---- wiring ---------------------------------------------------------------

function hydrate() {
  const charts = document.querySelector(".charts");
  if (charts && !polling) {
    const workload = charts.dataset.workload;
    sample(workload);
    polling = setInterval(() => sample(workload), 2000);
  }
  drawCharts();
  for (const pre of document.querySelectorAll("pre[data-logs]")) tailLog(pre);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  if (form) {
    signIn(form);
    return;
  }
  actions();
  hydrate();
  follow();
});
