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

// Times: local date and time; durations as 4s, 2m 05s, 1h 02m; live ones tick each second.
const pad = (n) => String(n).padStart(2, "0");
function stamp(at) {
  const d = new Date(at * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}
const took = (a, b) => (a && b ? span(b - a) : "");
function tick() {
  const now = Date.now() / 1000;
  document.querySelectorAll("[data-since]").forEach((el) => { el.textContent = span(now - Number(el.dataset.since)); });
  document.querySelectorAll("time[data-at]").forEach((el) => { el.textContent = stamp(Number(el.dataset.at)); });
}
setInterval(tick, 1000);

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
  on("#new-project", projectForm);
  tick();
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

// --- a new project, in one of the caller's organizations (or none, for site admins) --
function projectForm(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: form.elements.name.value.trim() };
    if (form.elements.org?.value) body.org = form.elements.org.value;
    const result = await api("POST", "/api/projects", body);
    if (result.ok) location.href = `/p/${encodeURIComponent(result.data.name)}`;
    else form.querySelector(".problems").innerHTML = `<li>${esc(result.data.error)}</li>`;
  });
}
