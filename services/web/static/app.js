// Runyard's pages: small plain JavaScript over the JSON API (session cookie + CSRF).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

const esc = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

// ANSI SGR colours → spans (the common 8/16 colours and bold; others are dropped).
const ANSI = { 30: "#555", 31: "#e06c75", 32: "#98c379", 33: "#e5c07b", 34: "#61afef", 35: "#c678dd", 36: "#56b6c2", 37: "#dcdfe4",
  90: "#777", 91: "#ff7b86", 92: "#b5e890", 93: "#ffd479", 94: "#82c4ff", 95: "#e29cff", 96: "#7fd7e0", 97: "#fff" };
function ansi(text) {
  let out = "", open = 0;
  for (const part of esc(text).split(/\x1b\[([0-9;]*)m/).entries()) {
    const [i, chunk] = part;
    if (i % 2 === 0) { out += chunk; continue; }
    for (const code of chunk.split(";").map(Number)) {
      if (code === 0 || chunk === "") { out += "</span>".repeat(open); open = 0; }
      else if (code === 1) { out += '<span style="font-weight:700">'; open++; }
      else if (ANSI[code]) { out += `<span style="color:${ANSI[code]}">`; open++; }
    }
  }
  return out + "</span>".repeat(open);
}

// --- the pipeline editor: line numbers, validation as you type, create / save ------
function editor(root) {
  const source = root.querySelector("#source"), gutter = root.querySelector(".gutter");
  const problems = document.getElementById("problems"), state = document.getElementById("state");
  let bad = new Set(), timer = 0;
  const numbers = () => {
    const count = source.value.split("\n").length;
    gutter.innerHTML = Array.from({ length: count }, (_, i) =>
      `<span class="${bad.has(i + 1) ? "bad" : ""}">${i + 1}</span>`).join("\n");
    gutter.scrollTop = source.scrollTop;
  };
  const show = (list) => {
    bad = new Set(list.map((p) => p.line));
    problems.innerHTML = list.map((p) =>
      `<li data-line="${p.line}">line ${p.line}, column ${p.column}: ${esc(p.message)}</li>`).join("");
    state.textContent = list.length ? `${list.length} problem(s)` : "valid";
    numbers();
  };
  const check = async () => show((await api("POST", "/api/validate", { source: source.value })).data.problems || []);
  source.addEventListener("input", () => { numbers(); clearTimeout(timer); timer = setTimeout(check, 250); });
  source.addEventListener("scroll", () => { gutter.scrollTop = source.scrollTop; });
  document.getElementById("save").addEventListener("click", async () => {
    const project = root.dataset.project, name = root.dataset.name;
    const base = `/api/projects/${encodeURIComponent(project)}/pipelines`;
    const result = name
      ? await api("PUT", `${base}/${encodeURIComponent(name)}`, { source: source.value })
      : await api("POST", base, { source: source.value });
    if (result.ok) {
      location.href = `/p/${encodeURIComponent(project)}/pipelines/${encodeURIComponent(result.data.name)}`;
    } else {
      show(result.data.problems || [{ line: 1, column: 1, message: result.data.error || "not saved" }]);
    }
  });
  numbers();
  check();
}

// --- the run button, with the run form when the pipeline has one --------------------
function runButton(button) {
  const schema = JSON.parse(button.dataset.form || "{}");
  const form = document.getElementById("run-form");
  const props = schema.properties || {};
  const start = async (inputs) => {
    const path = `/api/projects/${encodeURIComponent(button.dataset.project)}/pipelines/${encodeURIComponent(button.dataset.name)}/runs`;
    const result = await api("POST", path, { inputs });
    if (result.ok) { location.href = `/runs/${result.data.run}`; return; }
    const list = (result.data.problems || []).map((p) => `<li>${esc(p.message)}</li>`).join("");
    form.querySelector(".problems").innerHTML = list || `<li>${esc(result.data.error)}</li>`;
  };
  if (!Object.keys(props).length) { button.addEventListener("click", () => start({})); return; }
  form.innerHTML = Object.entries(props).map(([name, p]) => {
    const value = p.default !== undefined ? esc(p.default) : "";
    if (p.enum) return `<label>${esc(p.title || name)} <select name="${esc(name)}">${p.enum.map((v) => `<option ${v === p.default ? "selected" : ""}>${esc(v)}</option>`).join("")}</select></label>`;
    if (p.type === "boolean") return `<label><input type="checkbox" name="${esc(name)}" ${p.default ? "checked" : ""}> ${esc(p.title || name)}</label>`;
    const type = p.type === "integer" || p.type === "number" ? "number" : "text";
    return `<label>${esc(p.title || name)} <input name="${esc(name)}" type="${type}" ${p.type === "number" ? 'step="any"' : ""} value="${value}"></label>`;
  }).join("") + '<button type="submit" class="primary">Start run</button><ul class="problems"></ul>';
  button.addEventListener("click", () => form.classList.toggle("hidden"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const inputs = {};
    for (const [name, p] of Object.entries(props)) {
      const field = form.elements[name];
      if (p.type === "boolean") inputs[name] = field.checked;
      else if (field.value === "") continue;
      else if (p.type === "integer") inputs[name] = parseInt(field.value, 10);
      else if (p.type === "number") inputs[name] = parseFloat(field.value);
      else inputs[name] = field.value;
    }
    start(inputs);
  });
}

// --- the run page: statuses live, each step's log following over SSE ---------------
function runPage(root) {
  const run = root.dataset.run, streams = {};
  const badge = document.getElementById("run-status");
  const took = (a, b) => (a && b ? `${(b - a).toFixed(1)}s` : "");
  const PAGE = 1000;
  const lineDiv = (line) => {
    const div = document.createElement("div");
    div.className = "line";
    div.innerHTML = ansi(line.text);
    return div;
  };
  // Long logs are paged: the newest PAGE lines are replayed and followed live; earlier
  // ones load a page at a time with "Show earlier lines". Each attempt of a job has its
  // own log per step; an earlier attempt's is read once, not followed.
  const follow = async (job, step, pre, attempt, live = true) => {
    const key = `${job}/${attempt}/${step}`;
    if (streams[key]) return;
    streams[key] = "starting";
    const path = `/api/runs/${run}/jobs/${encodeURIComponent(job)}/steps/${encodeURIComponent(step)}/logs`;
    const at = `attempt=${attempt}`;
    const head = await api("GET", `${path}?from=1&limit=1&${at}`);
    let first = live ? Math.max(1, (head.data.last || 0) - PAGE + 1) : 1;
    if (first > 1) {
      const more = document.createElement("button");
      more.className = "earlier";
      more.textContent = "Show earlier lines";
      more.addEventListener("click", async () => {
        const from = Math.max(1, first - PAGE);
        const page = await api("GET", `${path}?from=${from}&limit=${first - from}&${at}`);
        more.after(...page.data.lines.map(lineDiv));
        first = from;
        if (first === 1) more.remove();
      });
      pre.appendChild(more);
    }
    if (!live) {
      for (let from = 1; ;) {
        const page = await api("GET", `${path}?from=${from}&${at}`);
        if (!page.ok) break;
        pre.append(...page.data.lines.map(lineDiv));
        if (!page.data.lines.length || page.data.ended) break;
        from = page.data.next;
      }
      return;
    }
    const source = new EventSource(`${path}/events?from=${first}&${at}`);
    streams[key] = source;
    source.onmessage = (event) => {
      pre.appendChild(lineDiv(JSON.parse(event.data)));
      pre.scrollTop = pre.scrollHeight;
    };
    source.addEventListener("end", () => source.close());
  };
  const stepInfo = (step) => {
    const outputs = Object.entries(step.outputs || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ");
    return [took(step.started_at, step.finished_at), step.exit_code !== null ? `exit ${step.exit_code}` : "",
      outputs, step.error || ""].filter(Boolean).join(" · ");
  };
  // An earlier attempt: its status, agent and steps, and what its agent said too late.
  const attemptBox = (job, past) => {
    const box = document.createElement("details");
    box.className = "attempt";
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
      const item = document.createElement("details");
      item.className = "step";
      item.innerHTML = `<summary><span class="status ${esc(step.status)}">${esc(step.status)}</span><span class="name"></span><span class="muted info"></span></summary><pre class="log"></pre>`;
      item.querySelector(".name").textContent = step.name;
      item.querySelector(".info").textContent = stepInfo(step);
      item.addEventListener("toggle", () => item.open && follow(job.key, step.id, item.querySelector(".log"), past.attempt, false));
      box.appendChild(item);
    }
    return box;
  };
  const render = (data) => {
    if (document.getElementById("waiting")) {  // it exists now: show its full page
      location.reload();
      return true;
    }
    badge.textContent = data.status;
    badge.className = `status ${data.status}`;
    for (const job of data.jobs) {
      let box = root.querySelector(`[data-job="${CSS.escape(job.key)}"]`);
      if (!box) {
        box = document.createElement("section");
        box.className = "job";
        box.dataset.job = job.key;
        box.innerHTML = `<h3><span class="name"></span><span class="status"></span><span class="muted needs"></span></h3><div class="attempts"></div><div class="steps"></div><div class="extra muted"></div>`;
        root.appendChild(box);
      }
      box.querySelector(".name").textContent = job.name;
      const jobStatus = box.querySelector("h3 .status");
      jobStatus.textContent = job.status;
      jobStatus.className = `status ${job.status}`;
      const needs = job.needs?.length ? `after ${job.needs.join(", ")} · ` : "";
      const attempt = job.attempt > 1 ? `attempt ${job.attempt} · ` : "";
      box.querySelector(".needs").textContent = `${needs}${attempt}${job.agent ? "on " + job.agent.name : ""} ${took(job.started_at, job.finished_at)}`;
      if (box.dataset.attempt !== String(job.attempt)) {  // a new attempt: its own steps and logs
        box.dataset.attempt = String(job.attempt);
        box.querySelector(".steps").innerHTML = "";
      }
      const attempts = box.querySelector(".attempts");
      if (attempts.children.length !== (job.attempts || []).length || attempts.dataset.stale !== String((job.stale || []).length)) {
        attempts.dataset.stale = String((job.stale || []).length);
        attempts.replaceChildren(...(job.attempts || []).map((past) => attemptBox(job, past)));
      }
      for (const step of job.steps) {
        let item = box.querySelector(`.steps [data-step="${CSS.escape(step.id)}"]`);
        if (!item) {
          item = document.createElement("details");
          item.className = "step";
          item.dataset.step = step.id;
          item.innerHTML = `<summary><span class="status"></span><span class="name"></span><span class="muted info"></span></summary><pre class="log"></pre>`;
          box.querySelector(".steps").appendChild(item);
        }
        const s = item.querySelector(".status");
        s.textContent = step.status;
        s.className = `status ${step.status}`;
        item.querySelector(".name").textContent = step.name;
        item.querySelector(".info").textContent = stepInfo(step);
        if (step.status !== "queued" && step.status !== "skipped") {
          if (step.status === "running") item.open = true;
          follow(job.key, step.id, item.querySelector(".log"), job.attempt);
        }
      }
      const extra = [];
      if (job.artifacts?.length) extra.push("Artifacts: " + job.artifacts.map((a) =>
        `<a href="/api/runs/${run}/artifacts/${encodeURIComponent(job.key)}/${encodeURIComponent(a.artifact)}/${a.path.split("/").map(encodeURIComponent).join("/")}">${esc(a.path)}</a>`).join(", "));
      if (job.tests) extra.push(`Tests: ${job.tests.passed} passed, ${job.tests.failed} failed, ${job.tests.skipped} skipped` +
        job.tests.failures.map((f) => `<div class="error">${esc(f.name)}: ${esc(f.message)}</div>`).join(""));
      box.querySelector(".extra").innerHTML = extra.join("<br>");
    }
    return !["queued", "running"].includes(data.status);
  };
  const poll = async () => {
    const result = await api("GET", `/api/runs/${run}`);
    const done = result.ok && render(result.data);
    if (!done) setTimeout(poll, 700);
  };
  document.getElementById("cancel").addEventListener("click", () => api("POST", `/api/runs/${run}/cancel`));
  document.getElementById("rerun").addEventListener("click", async () => {
    const result = await api("POST", `/api/runs/${run}/rerun`);
    if (result.ok) location.href = `/runs/${result.data.run}`;
  });
  poll();
}

// --- agents: online dots kept live --------------------------------------------------
function agentsPage(root) {
  const ago = () => root.querySelectorAll("td.seen[data-at]").forEach((cell) => {
    const at = Number(cell.dataset.at);
    if (at) cell.textContent = `${Math.max(0, Math.round(Date.now() / 1000 - at))} s ago`;
  });
  const refresh = async () => {
    const result = await api("GET", "/api/agents");
    if (result.ok) {
      for (const agent of result.data) {
        const dot = root.querySelector(`[data-agent="${agent.id}"] .dot`);
        if (dot) { dot.className = `dot ${agent.online ? "online" : "offline"}`; dot.title = agent.online ? "online" : "offline"; }
        const seen = root.querySelector(`[data-agent="${agent.id}"] td.seen`);
        if (seen && agent.last_seen) seen.dataset.at = agent.last_seen;
      }
    }
    ago();
    setTimeout(refresh, 2000);
  };
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  const on = (selector, setup) => { const el = document.querySelector(selector); if (el) setup(el); };
  on(".editor", editor);
  on("#run", runButton);
  on("#jobs", runPage);
  on("#agents", agentsPage);
});

// --- the project's webhook secret: made on the server, shown once -----------------
function webhookButton(button) {
  button.addEventListener("click", async () => {
    if (!confirm("Make a new webhook secret? Hooks signed with the old one will be refused.")) return;
    const result = await api("PUT", `/api/projects/${encodeURIComponent(button.dataset.project)}/webhook`, {});
    const out = document.getElementById("webhook-secret");
    out.textContent = result.ok ? `New secret (shown once): ${result.data.secret}` : result.data.error;
  });
}

// --- sparklines of CPU (blue) and memory (green) from the heartbeat history ---------
async function sparkline(svg) {
  const result = await api("GET", `/api/agents/${svg.dataset.agent}/metrics`);
  if (!result.ok || result.data.length < 2) return;
  const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
  const points = (key) => result.data.map((m, i) =>
    `${(i / (result.data.length - 1)) * w},${h - (Math.min(m[key], 100) / 100) * (h - 2) - 1}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="#2456c6" stroke-width="1.5" points="${points("cpu")}"/>` +
    `<polyline fill="none" stroke="#1f9d55" stroke-width="1.5" points="${points("mem")}"/>`;
}

// --- the Manage agents dialog: assign and unassign agents to the project ------------
function manageAgents(dialog) {
  const project = dialog.dataset.project;
  document.getElementById("manage").addEventListener("click", () => dialog.showModal());
  document.getElementById("manage-close").addEventListener("click", () => dialog.close());
  document.getElementById("manage-save").addEventListener("click", async () => {
    for (const box of dialog.querySelectorAll("input[type=checkbox]")) {
      const was = box.defaultChecked;
      if (box.checked === was) continue;
      await api(box.checked ? "PUT" : "DELETE", `/api/agents/${box.value}/projects/${encodeURIComponent(project)}`);
    }
    location.reload();
  });
}

// --- settings: users, organizations, API keys through the API -----------------------
function settingsForms(root) {
  const paths = { user: "/api/users", org: "/api/orgs", key: "/api/keys" };
  const problems = document.getElementById("settings-problems");
  const act = async (method, path) => {
    const result = await api(method, path);
    if (result.ok) location.reload(); else problems.innerHTML = `<li>${esc(result.data.error)}</li>`;
  };
  for (const button of root.querySelectorAll("[data-revoke-key]")) {
    button.addEventListener("click", () => confirm("Revoke this key? Whoever uses it is refused within seconds.")
      && act("DELETE", `/api/keys/${encodeURIComponent(button.dataset.revokeKey)}`));
  }
  for (const button of root.querySelectorAll("[data-remove-user]")) {
    button.addEventListener("click", () => confirm(`Remove ${button.dataset.removeUser}, their memberships and keys?`)
      && act("DELETE", `/api/users/${encodeURIComponent(button.dataset.removeUser)}`));
  }
  for (const form of root.querySelectorAll("form[data-action]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = Object.fromEntries(new FormData(form).entries());
      if (body.expires_in_days === "") delete body.expires_in_days;
      else if (body.expires_in_days !== undefined) body.expires_in_days = Number(body.expires_in_days);
      const result = await api("POST", paths[form.dataset.action], body);
      if (!result.ok) { problems.innerHTML = `<li>${esc(result.data.error)}</li>`; return; }
      if (form.dataset.action === "key") {
        document.getElementById("new-key").textContent = `New key (shown once): ${result.data.key}`;
      } else {
        location.reload();
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const settings = document.getElementById("settings");
  if (settings) settingsForms(settings);
  document.querySelectorAll("svg.spark").forEach(sparkline);
  const hook = document.getElementById("webhook");
  if (hook) webhookButton(hook);
  const dialog = document.getElementById("manage-dialog");
  if (dialog) manageAgents(dialog);
  const del = document.getElementById("delete-agent");
  if (del) del.addEventListener("click", async () => {
    if (!confirm("Delete this agent? It can no longer take work.")) return;
    const result = await api("DELETE", `/api/agents/${del.dataset.agent}`);
    if (result.ok) location.href = "/agents";
  });
});
