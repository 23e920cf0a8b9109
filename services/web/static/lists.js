// Live lists and charts: a project's or pipeline's runs (filtered, paged, refreshed in
// place), the pipeline's run-duration trend and an agent's busy slots. After app.js.
"use strict";

const STATUS_COLOURS = { success: "#1f9d55", failure: "#d64545", cancelled: "#8a63b8", running: "#d49a00", queued: "#8a93a6" };

function runRow(run, withPipeline) {
  const duration = run.started_at && !run.finished_at ? `<span data-since="${run.started_at}"></span>` : took(run.started_at, run.finished_at) || "-";
  const when = run.created_at ? `<time datetime="${new Date(run.created_at * 1000).toISOString()}">${stamp(run.created_at)}</time>` : "-";
  return `<tr data-run="${esc(run.id)}">${withPipeline ? `<td>${esc(run.pipeline)}</td>` : ""}` +
    `<td><a href="/runs/${esc(run.id)}">#${run.number}</a></td><td><span class="status ${esc(run.status)}">${esc(run.status)}</span></td>` +
    `<td>${esc(run.trigger || "-")}</td><td>${esc(run.branch || "-")}</td><td>${esc(run.actor || "-")}</td><td>${when}</td><td>${duration}</td></tr>`;
}

// The runs table in `root`: its filter form's choices and the page shown are in the
// address (`?status=…&before=…`), so a filtered list can be shared and reloaded.
function runsList(root) {
  const project = root.dataset.project, pipeline = root.dataset.pipeline || "";
  const form = root.querySelector("form.filters"), body = root.querySelector("tbody");
  const older = root.querySelector(".older"), newest = root.querySelector(".newest");
  const empty = root.querySelector(".empty-filtered");
  const params = new URLSearchParams(location.search);
  for (const name of ["status", "branch", "trigger", "actor"]) if (params.get(name)) form.elements[name].value = params.get(name);
  let before = params.get("before") || "", timer = 0, seen = null;
  const query = () => {
    const q = new URLSearchParams();
    for (const name of ["status", "branch", "trigger", "actor"]) if (form.elements[name].value) q.set(name, form.elements[name].value);
    if (pipeline) q.set("pipeline", pipeline);
    if (before) q.set("before", before);
    if (params.get("limit")) q.set("limit", params.get("limit"));  // runs a page, when not the default
    return q;
  };
  const refresh = async () => {
    clearTimeout(timer);
    const q = query();
    const result = await api("GET", `/api/projects/${encodeURIComponent(project)}/runs?${q}`);
    if (result.ok) {
      body.innerHTML = result.data.runs.map((r) => runRow(r, !pipeline)).join("");
      const now = result.data.runs.map((r) => `${r.id}:${r.status}`).join(" ");
      if (seen !== null && now !== seen) document.dispatchEvent(new Event("runs-changed"));  // for the chart
      seen = now;
      older.hidden = !result.data.next;
      older.dataset.next = result.data.next || "";
      newest.hidden = !before;
      empty.hidden = result.data.runs.length > 0;
      tick();
      q.delete("pipeline");
      history.replaceState(null, "", `${location.pathname}${q.toString() ? "?" + q : ""}${location.hash}`);
    }
    timer = setTimeout(refresh, 3000);
  };
  form.addEventListener("change", () => { before = ""; refresh(); });
  form.addEventListener("submit", (event) => { event.preventDefault(); before = ""; refresh(); });
  older.addEventListener("click", () => { before = older.dataset.next; refresh(); });
  newest.addEventListener("click", () => { before = ""; refresh(); });
  refresh();
}

// Bars of the last runs' durations, oldest on the left, coloured by status.
async function trendChart(svg) {
  const q = new URLSearchParams({ pipeline: svg.dataset.pipeline, limit: "40" });
  const result = await api("GET", `/api/projects/${encodeURIComponent(svg.dataset.project)}/runs?${q}`);
  if (!result.ok) return;
  const runs = result.data.runs.filter((r) => r.started_at).reverse();
  const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
  if (!runs.length) { svg.innerHTML = `<text x="4" y="${h / 2}" class="axis">No runs yet</text>`; return; }
  const now = Date.now() / 1000;
  const seconds = runs.map((r) => (r.finished_at || now) - r.started_at);
  const top = Math.max(...seconds, 1), step = Math.min(28, (w - 40) / runs.length);
  const bars = runs.map((r, i) => {
    const bh = Math.max(2, (seconds[i] / top) * (h - 20));
    return `<a href="/runs/${esc(r.id)}"><rect class="bar ${esc(r.status)}" x="${40 + i * step + 1}" y="${h - 14 - bh}" width="${Math.max(2, step - 2)}" height="${bh}" fill="${STATUS_COLOURS[r.status] || "#8a93a6"}"><title>#${r.number} ${esc(r.status)}, ${took(r.started_at, r.finished_at || now)}</title></rect></a>`;
  });
  svg.innerHTML = `<text x="0" y="12" class="axis">${span(top)}</text><text x="0" y="${h - 16}" class="axis">0s</text>` +
    `<line x1="38" y1="${h - 14}" x2="${w}" y2="${h - 14}" class="axis-line"/>${bars.join("")}` +
    `<text x="40" y="${h - 2}" class="axis">#${runs[0].number}</text><text x="${40 + (runs.length - 1) * step}" y="${h - 2}" class="axis">#${runs[runs.length - 1].number}</text>`;
  svg.setAttribute("aria-label", `Duration of the last ${runs.length} runs, longest ${span(top)}`);
}

// Slots busy over the window: a step line from the agent's job attempts, with its
// slot count as a dashed line above.
async function busyChart(svg) {
  const result = await api("GET", `/api/agents/${svg.dataset.agent}/busy?hours=24`);
  if (!result.ok) return;
  const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
  const now = Date.now() / 1000, since = result.data.since, slots = Math.max(1, result.data.slots || 1);
  const changes = [];
  for (const [start, end] of result.data.spans) {
    changes.push([Math.max(start, since), 1]);
    changes.push([end || now, -1]);
  }
  changes.sort((a, b) => a[0] - b[0]);
  const x = (t) => 30 + ((t - since) / (now - since)) * (w - 34), y = (n) => h - 14 - (n / slots) * (h - 24);
  let busy = 0, points = `${x(since)},${y(0)}`, most = 0;
  for (const [at, change] of changes) {
    points += ` ${x(at)},${y(busy)}`;
    busy += change;
    most = Math.max(most, busy);
    points += ` ${x(at)},${y(busy)}`;
  }
  points += ` ${x(now)},${y(busy)}`;
  svg.innerHTML = `<line x1="30" y1="${y(slots)}" x2="${w}" y2="${y(slots)}" class="slots-line"/>` +
    `<text x="0" y="${y(slots) + 4}" class="axis">${slots}</text><text x="0" y="${y(0) + 4}" class="axis">0</text>` +
    `<polyline class="busy-line" fill="none" points="${points}"/>` +
    `<text x="30" y="${h - 1}" class="axis">24 h ago</text><text x="${w - 26}" y="${h - 1}" class="axis">now</text>`;
  svg.setAttribute("aria-label", `Slots busy over the last 24 hours: at most ${most} of ${slots}, ${result.data.spans.length} job attempts`);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".runs-list").forEach(runsList);
  document.querySelectorAll("svg.trend").forEach((svg) => {
    trendChart(svg);
    document.addEventListener("runs-changed", () => trendChart(svg));
  });
  document.querySelectorAll("svg.busy").forEach(busyChart);
});
