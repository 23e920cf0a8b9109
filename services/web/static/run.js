// The run page: its context, the job graph, each job's steps with their logs (log.js),
// artifacts and tests, all kept live by polling the run. Loaded after app.js and log.js.
"use strict";

const ACTIVE = ["queued", "running"];
const FAILED = ["failure", "timed-out", "agent-lost", "interrupted"];
const NO_LOG = ["queued", "skipped"];
const ICONS = { success: "✓", failure: "✗", running: "●", queued: "…", cancelled: "⊘", skipped: "–" };

const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

// The job graph: one box per job (a matrix's jobs in one box), columns by depth in
// `needs`, an edge from each need to the job that waits for it.
function drawGraph(svg, jobs) {
  const groups = new Map();
  for (const job of jobs) {
    const group = groups.get(job.job_id) || { id: job.job_id, jobs: [], needs: job.needs || [] };
    group.jobs.push(job);
    groups.set(job.job_id, group);
  }
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id) || !groups.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...groups.get(id).needs.map((n) => depthOf(n, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const group of groups.values()) (columns[depthOf(group.id)] ||= []).push(group);
  const W = 170, H = 38, GX = 60, GY = 14, at = new Map();
  columns.forEach((column, x) => (column || []).forEach((group, y) => at.set(group.id, { x: 8 + x * (W + GX), y: 8 + y * (H + GY) })));
  const width = 16 + columns.length * (W + GX) - GX, height = 16 + Math.max(...columns.map((c) => (c || []).length)) * (H + GY) - GY;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  const edges = [], nodes = [], said = [];
  for (const group of groups.values()) {
    const to = at.get(group.id);
    for (const need of group.needs) {
      const from = at.get(need);
      if (!from) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2;
      edges.push(`<path class="edge" data-from="${esc(need)}" data-to="${esc(group.id)}" d="M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}"/>`);
      said.push(`${need} → ${group.id}`);
    }
    const statuses = group.jobs.map((j) => j.status);
    const status = statuses.find((s) => FAILED.includes(s)) || statuses.find((s) => s === "running")
      || (statuses.every((s) => s === statuses[0]) ? statuses[0] : "running");
    const label = group.jobs.length > 1 ? `${group.id} ×${group.jobs.length}` : group.jobs[0].name;
    const target = `job-${group.jobs[0].key}`;
    nodes.push(`<a href="#${esc(encodeURIComponent(target))}" class="node ${esc(status)}" data-job="${esc(group.id)}">` +
      `<rect x="${to.x}" y="${to.y}" width="${W}" height="${H}" rx="6"/>` +
      `<text x="${to.x + 10}" y="${to.y + H / 2 + 4}">${ICONS[status] || ""} ${esc(label.length > 22 ? label.slice(0, 21) + "…" : label)}</text></a>`);
  }
  svg.innerHTML = `<title id="graph-title">Job graph: ${esc(said.join(", ") || [...groups.keys()].join(", "))}</title>${edges.join("")}${nodes.join("")}`;
}

function runPage(root) {
  const run = root.dataset.run, views = {};
  const badge = document.getElementById("run-status");
  const cancel = document.getElementById("cancel"), rerun = document.getElementById("rerun");
  const rerunFailed = document.getElementById("rerun-failed");
  const notice = document.getElementById("notice");
  let target = new URLSearchParams(location.hash.slice(1));
  let extraPolls = 30;  // after the run ends: artifacts and tests can still arrive
  const stamps = document.getElementById("timestamps");
  if (stamps) {
    const show = (on) => { document.body.classList.toggle("show-ts", on); localStorage.setItem("ry-timestamps", on ? "1" : ""); };
    stamps.checked = localStorage.getItem("ry-timestamps") === "1";
    show(stamps.checked);
    stamps.addEventListener("change", () => show(stamps.checked));
  }

  const stepInfo = (step) => {
    const outputs = Object.entries(step.outputs || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ");
    const time = step.status === "running" ? "" : took(step.started_at, step.finished_at);
    return [time, step.exit_code !== null ? `exit ${step.exit_code}` : "", outputs].filter(Boolean).join(" · ");
  };

  // A step's row: its log opens when asked for, when it runs or when it failed (once:
  // what the user closes stays closed).
  const stepBox = (job, step, attempt, live, holder, since = step.started_at) => {
    let item = holder.querySelector(`:scope > [data-step="${CSS.escape(step.id)}"]`);
    if (!item) {
      item = document.createElement("details");
      item.className = "step";
      item.dataset.step = step.id;
      item.innerHTML = '<summary><span class="status"></span><span class="name"></span><span class="muted info"></span><span class="muted timer"></span></summary><div class="step-error" role="alert" hidden></div><div class="logview"></div>';
      holder.appendChild(item);
      item.addEventListener("toggle", () => { if (item.open) openLog(job, step.id, attempt, item); });
    }
    const s = item.querySelector(".status");
    s.textContent = step.status;
    s.className = `status ${step.status}`;
    item.classList.toggle("failed", FAILED.includes(step.status));
    item.classList.toggle("nolog", NO_LOG.includes(step.status));
    item.dataset.live = String(live && ACTIVE.includes(step.status));
    item.querySelector(".name").textContent = step.name;
    item.querySelector(".info").textContent = stepInfo(step);
    const timer = item.querySelector(".timer");
    if (step.status === "running" && since) timer.dataset.since = String(since);
    else { delete timer.dataset.since; timer.textContent = ""; }
    const error = item.querySelector(".step-error");
    error.hidden = !step.error;
    error.textContent = step.error || "";
    const view = item.querySelector(".logview");
    if (NO_LOG.includes(step.status) && !view.dataset.view) {
      view.innerHTML = `<p class="muted">${step.status === "skipped" ? "Skipped: this step did not run, so it has no log." : "Not started yet."}</p>`;
    }
    const auto = step.status === "running" || FAILED.includes(step.status);
    if (auto && !item.dataset.opened) { item.dataset.opened = "1"; item.open = true; }
    return item;
  };

  const openLog = (job, stepId, attempt, item) => {
    const key = `${job.key}/${attempt}/${stepId}`;
    if (views[key] || item.classList.contains("nolog")) return views[key];
    const holder = item.querySelector(".logview");
    holder.dataset.view = "1";
    const from = job.reused_from;  // a carried job's steps ran, and logged, in that run
    views[key] = from ? new LogView(holder, from.run, job.key, stepId, from.attempt) : new LogView(holder, run, job.key, stepId, attempt);
    const named = target.get("job") === job.key && target.get("step") === stepId;
    views[key].ready = views[key].load(item.dataset.live === "true", named ? Number(target.get("line")) || 0 : 0);
    return views[key];
  };

  // An earlier attempt: its status, agent and steps, and what its agent said too late.
  const attemptBox = (job, past) => {
    const box = document.createElement("details");
    box.className = "attempt";
    box.dataset.attempt = String(past.attempt);
    const late = (job.stale || []).filter((s) => s.attempt === past.attempt);
    const where = past.agent ? `on ${past.agent.name || past.agent.id}` : "";
    box.innerHTML = `<summary>Attempt ${past.attempt} <span class="status ${esc(past.status)}">${esc(past.status)}</span> <span class="muted">${esc([where, took(past.started_at, past.finished_at), past.error || ""].filter(Boolean).join(" · "))}</span></summary>`;
    for (const report of late) {
      const what = report.what === "heartbeat" ? "still ran it" : `sent ${report.what}${report.step ? ` for step ${report.step}` : ""}${report.status ? ` (${report.status})` : ""}`;
      const line = document.createElement("div");
      line.className = "muted stale";
      line.textContent = `late: agent ${report.agent} ${what} after the attempt was no longer its own — ignored`;
      box.appendChild(line);
    }
    for (const step of past.steps) {
      if (step.status === "queued" || step.status === "skipped") continue;
      const item = stepBox(job, step, past.attempt, false, box);
      if (FAILED.includes(step.status)) item.open = false;  // an earlier attempt: opened on demand
    }
    return box;
  };

  const extras = (job) => {
    const parts = [];
    if (job.artifacts?.length) {
      parts.push(`<h4>Artifacts</h4><ul class="artifacts">${job.artifacts.map((a) =>
        `<li><a href="/api/runs/${run}/artifacts/${encodeURIComponent(job.key)}/${encodeURIComponent(a.artifact)}/${a.path.split("/").map(encodeURIComponent).join("/")}">${esc(a.path)}</a> <span class="muted">${bytes(a.size || 0)}</span></li>`).join("")}</ul>`);
    }
    if (job.tests) {
      const t = job.tests;
      parts.push(`<h4>Tests</h4><p class="tests">${t.passed} passed, ${t.failed} failed, ${t.skipped} skipped</p>` +
        (t.failures || []).map((f) => `<details class="test-failure"><summary><span class="status failure">failed</span> ${esc(f.name)}${f.message ? ": " + esc(f.message) : ""}</summary><pre>${esc(f.text || f.message || "")}</pre></details>`).join(""));
    }
    return parts.join("");
  };

  const jobBox = (job) => {
    let box = root.querySelector(`[data-job="${CSS.escape(job.key)}"]`);
    if (box) return box;
    box = document.createElement("section");
    box.className = "job";
    box.id = `job-${job.key}`;
    box.dataset.job = job.key;
    box.innerHTML = '<h3><span class="name"></span><span class="status"></span></h3><p class="muted where"></p><p class="muted reused" hidden></p><div class="job-error" role="alert" hidden></div><div class="attempts"></div><div class="steps"></div><div class="extra"></div>';
    let holder = root;
    if (Object.keys(job.matrix || {}).length) {  // a matrix's jobs together, under their job's name
      holder = root.querySelector(`[data-group="${CSS.escape(job.job_id)}"]`);
      if (!holder) {
        holder = document.createElement("div");
        holder.className = "group";
        holder.dataset.group = job.job_id;
        holder.innerHTML = `<p class="group-head"><b>${esc(job.job_id)}</b> <span class="muted">matrix</span></p>`;
        root.appendChild(holder);
      }
    }
    holder.appendChild(box);
    return box;
  };

  const renderJob = (job) => {
    const box = jobBox(job);
    box.querySelector(".name").textContent = job.name;
    const status = box.querySelector("h3 .status");
    status.textContent = job.status;
    status.className = `status ${job.status}`;
    const current = job.steps.findIndex((s) => s.status === "running");
    const progress = current >= 0 ? `step ${current + 1} of ${job.steps.length}` : `${job.steps.length} step${job.steps.length === 1 ? "" : "s"}`;
    const needs = job.needs?.length ? `after ${job.needs.join(", ")}` : "";
    const attempt = job.attempt > 1 ? `attempt ${job.attempt}` : "";
    const where = job.agent ? `on ${job.agent.name}` : "";
    const time = ACTIVE.includes(job.status) ? "" : took(job.started_at, job.finished_at);
    box.querySelector(".where").textContent = [progress, needs, attempt, where, time].filter(Boolean).join(" · ");
    const reused = box.querySelector(".reused"), from = job.reused_from;
    reused.hidden = !from;
    if (from && !reused.dataset.run) {
      reused.dataset.run = from.run;
      reused.innerHTML = `reused from <a href="/runs/${encodeURIComponent(from.run)}">#${esc(String(from.number))}</a>: it succeeded there and was not run again`;
    }
    const error = box.querySelector(".job-error");
    const shown = job.error && !job.steps.some((s) => s.error === job.error);
    error.hidden = !shown;
    error.textContent = shown ? job.error : "";
    if (box.dataset.attempt !== String(job.attempt)) {  // a new attempt: its own steps and logs
      box.dataset.attempt = String(job.attempt);
      box.querySelector(".steps").innerHTML = "";
    }
    const attempts = box.querySelector(".attempts");
    if (attempts.children.length !== (job.attempts || []).length || attempts.dataset.stale !== String((job.stale || []).length)) {
      attempts.dataset.stale = String((job.stale || []).length);
      attempts.replaceChildren(...(job.attempts || []).map((past) => attemptBox(job, past)));
    }
    job.steps.forEach((step, i) => {
      // the engine records a step's start when it ends: until then, it began when the
      // step before it ended (or the job started)
      const since = step.started_at || (i ? job.steps[i - 1].finished_at : job.started_at);
      const item = stepBox(job, step, job.attempt, true, box.querySelector(".steps"), since);
      if (item.open) openLog(job, step.id, job.attempt, item);
    });
    const extra = extras(job);
    if (box.querySelector(".extra").dataset.html !== extra) {
      box.querySelector(".extra").dataset.html = extra;
      box.querySelector(".extra").innerHTML = extra;
    }
  };

  const context = (data) => {
    const event = data.event || {}, inputs = data.inputs || {};
    const rows = [
      ["Trigger", `${esc(data.trigger || event.kind || "-")}${data.actor ? ` by ${esc(data.actor)}` : ""}`],
      ["Pipeline", `<a href="/p/${encodeURIComponent(data.project)}/pipelines/${encodeURIComponent(data.pipeline)}/versions/${data.pipeline_version}">version ${data.pipeline_version}</a>`],
    ];
    if (event.branch || event.tag || event.ref) rows.push(["Ref", esc(event.branch || event.tag || event.ref) + (event.sha ? ` <code>${esc(event.sha.slice(0, 10))}</code>` : "")]);
    rows.push(["Started", data.started_at ? `<time datetime="${new Date(data.started_at * 1000).toISOString()}">${stamp(data.started_at)}</time>` : "not yet"]);
    rows.push(["Duration", data.started_at && ACTIVE.includes(data.status) ? `<span data-since="${data.started_at}"></span>` : took(data.started_at, data.finished_at) || "-"]);
    const given = Object.entries(inputs);
    if (given.length) rows.push(["Inputs", given.map(([k, v]) => `<code>${esc(k)}</code> = ${esc(JSON.stringify(v))}`).join(", ")]);
    const html = rows.map(([k, v]) => `<div><dt>${k}</dt><dd>${v}</dd></div>`).join("");
    const box = document.getElementById("context");
    if (box.dataset.html !== html) { box.dataset.html = html; box.innerHTML = html; }
  };

  // Open the step a permalink names and scroll to its line.
  const reveal = async (data) => {
    if (!target.get("line")) return;
    const job = data.jobs.find((j) => j.key === target.get("job"));
    if (!job) return;
    const attempt = Number(target.get("attempt")) || job.attempt;
    const box = root.querySelector(`[data-job="${CSS.escape(job.key)}"]`);
    const holder = attempt === job.attempt ? box.querySelector(".steps") : box.querySelector(`.attempt[data-attempt="${attempt}"]`);
    if (!holder) return;
    holder.open = true;
    const item = holder.querySelector(`:scope > [data-step="${CSS.escape(target.get("step"))}"]`);
    if (!item) return;
    item.open = true;
    const view = openLog(job, item.dataset.step, attempt, item);
    const seq = Number(target.get("line"));
    target = new URLSearchParams();
    if (!view) return;
    await view.ready;
    for (let tries = 0; tries < 100 && !(await view.reveal(seq)); tries++) await new Promise((ok) => setTimeout(ok, 100));
  };

  const render = (data) => {
    if (document.getElementById("waiting")) {  // it exists now: show its full page
      location.reload();
      return true;
    }
    badge.textContent = data.status;
    badge.className = `status ${data.status}`;
    document.title = `${ICONS[data.status] || ""} ${data.status} · ${data.pipeline} #${data.number} · Runyard`;
    cancel.hidden = !ACTIVE.includes(data.status) || data.cancelled;
    rerun.hidden = ACTIVE.includes(data.status);
    rerunFailed.hidden = ACTIVE.includes(data.status) || !data.jobs.some((j) => FAILED.includes(j.status) || j.status === "cancelled");
    context(data);
    drawGraph(document.getElementById("graph"), data.jobs);
    for (const job of data.jobs) renderJob(job);
    return !ACTIVE.includes(data.status);
  };

  let waited = 0, last = null;
  const began = Date.now();
  const poll = async () => {
    const result = await api("GET", `/api/runs/${run}`);
    if (result.status === 404 && !document.getElementById("waiting")) {
      notice.hidden = false;
      notice.textContent = `No run '${run}'.`;
      return;
    }
    if (!result.ok) {  // asked for, not made yet: look again, less often as time goes by
      waited++;
      if (Date.now() - began > 120_000) {  // two minutes: no dispatcher has made it
        notice.hidden = false;
        notice.textContent = "The run has not been made after two minutes: is a dispatcher running? Reload to look again.";
        return;
      }
      setTimeout(poll, Math.min(3000, 700 + waited * 100));
      return;
    }
    const first = last === null;
    last = result.data;
    const done = render(last);
    if (first) reveal(last);
    if (!done) setTimeout(poll, 700);
    else if (extraPolls-- > 0) setTimeout(poll, 2000);
  };
  window.addEventListener("hashchange", () => {
    target = new URLSearchParams(location.hash.slice(1));
    if (last) reveal(last);
  });
  cancel.addEventListener("click", async () => {
    const result = await api("POST", `/api/runs/${run}/cancel`);
    notice.hidden = result.ok;
    notice.textContent = result.ok ? "" : result.data.error;
    if (result.ok) cancel.hidden = true;
  });
  const again = async (body) => {
    const result = await api("POST", `/api/runs/${run}/rerun`, body);
    if (result.ok) location.href = `/runs/${result.data.run}`;
    else { notice.hidden = false; notice.textContent = result.data.error; }
  };
  rerun.addEventListener("click", () => again());
  rerunFailed.addEventListener("click", () => again({ failed: true }));
  poll();
}
