// Step logs: ANSI colours, collapsed `\r` progress lines, links, line numbers with
// permalinks, timestamps, search, and paging through long logs. Loaded after app.js.
"use strict";

// The 16 ANSI colours (normal, then bright), readable on the log's dark background.
const PALETTE = ["#3f4451", "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#dcdfe4",
  "#8b92a1", "#ff7b86", "#b5e890", "#ffd479", "#82c4ff", "#e29cff", "#7fd7e0", "#ffffff"];
const CUBE = [0, 95, 135, 175, 215, 255];

function color256(n) {
  if (n < 16) return PALETTE[n];
  if (n < 232) { const i = n - 16; return `rgb(${CUBE[Math.floor(i / 36)]},${CUBE[Math.floor(i / 6) % 6]},${CUBE[i % 6]})`; }
  const grey = 8 + (n - 232) * 10;
  return `rgb(${grey},${grey},${grey})`;
}

const PLAIN = () => ({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false });

// One SGR sequence's codes applied to `state` (38/48 take 5;n or 2;r;g;b after them).
function applySgr(state, codes) {
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(state, PLAIN());
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 3) state.italic = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) { state.bold = false; state.dim = false; }
    else if (c === 23) state.italic = false;
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = PALETTE[c - 30];
    else if (c >= 90 && c <= 97) state.fg = PALETTE[c - 82];
    else if (c >= 40 && c <= 47) state.bg = PALETTE[c - 40];
    else if (c >= 100 && c <= 107) state.bg = PALETTE[c - 92];
    else if (c === 39) state.fg = null;
    else if (c === 49) state.bg = null;
    else if (c === 38 || c === 48) {
      let colour = null;
      if (codes[i + 1] === 5) { colour = color256((codes[i + 2] || 0) & 255); i += 2; }
      else if (codes[i + 1] === 2) { colour = `rgb(${codes.slice(i + 2, i + 5).map((v) => (v || 0) & 255).join(",")})`; i += 4; }
      if (c === 38) state.fg = colour; else state.bg = colour;
    }
  }
}

function css(state) {
  const parts = [];
  if (state.fg) parts.push(`color:${state.fg}`);
  if (state.bg) parts.push(`background:${state.bg}`);
  if (state.bold) parts.push("font-weight:700");
  if (state.dim) parts.push("opacity:.7");
  if (state.italic) parts.push("font-style:italic");
  if (state.underline) parts.push("text-decoration:underline");
  return parts.join(";");
}

const URL_RE = /https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}]/g;

// Plain text → escaped HTML with its URLs as links.
function linked(text) {
  let out = "", at = 0;
  for (const match of text.matchAll(URL_RE)) {
    out += esc(text.slice(at, match.index));
    out += `<a href="${esc(match[0])}" rel="noopener noreferrer nofollow" target="_blank">${esc(match[0])}</a>`;
    at = match.index + match[0].length;
  }
  return out + esc(text.slice(at));
}

// What a terminal would leave of a line that redraws itself with `\r`: the last frame.
function lastFrame(text) {
  const frames = text.replace(/\r+$/, "").split("\r");
  return frames[frames.length - 1];
}

// A line with ANSI escapes → HTML; other control sequences (cursor moves) are dropped.
function ansiHtml(raw) {
  const state = PLAIN();
  let out = "";
  const parts = lastFrame(raw).split(/\x1b\[([0-9;?]*)([A-Za-z])/);
  for (let i = 0; i < parts.length; i += 3) {
    const text = parts[i], style = css(state);
    if (text) out += style ? `<span style="${style}">${linked(text)}</span>` : linked(text);
    if (i + 2 < parts.length && parts[i + 2] === "m") {
      applySgr(state, parts[i + 1] === "" ? [0] : parts[i + 1].split(";").map(Number));
    }
  }
  return out;
}

const plainText = (raw) => lastFrame(raw).replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
const clock = (at) => (at ? new Date(at * 1000).toLocaleTimeString([], { hour12: false }) : "");

// The address of one line: the run page with `#job=…&step=…&attempt=…&line=…`.
function permalink(job, step, attempt, seq) {
  const hash = new URLSearchParams({ job, step, attempt: String(attempt), line: String(seq) });
  return `#${hash}`;
}

// One step's log in `root` (a `.logview`): its tools, its lines, and how they load.
class LogView {
  constructor(root, run, job, step, attempt) {
    Object.assign(this, { root, run, job, step, attempt, first: 1, loaded: false, source: null, ended: false });
    this.path = `/api/runs/${run}/jobs/${encodeURIComponent(job)}/steps/${encodeURIComponent(step)}/logs`;
    root.innerHTML = `<div class="logtools">
        <label>Search <input type="search" class="search" placeholder="text in this log"></label>
        <span class="found muted" aria-live="polite"></span>
        <a class="raw" href="${this.path}/raw?attempt=${attempt}" download>Raw log</a>
      </div><div class="log" role="log" tabindex="0" aria-label="Log of step ${esc(step)}"></div>`;
    this.box = root.querySelector(".log");
    const search = root.querySelector(".search");
    let timer = 0;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => this.search(search.value), 150); });
  }

  lineEl(line) {
    const div = document.createElement("div");
    div.className = line.stream === "err" ? "line err" : "line";
    div.dataset.seq = String(line.seq);
    div.dataset.text = plainText(line.text).toLowerCase();
    const href = permalink(this.job, this.step, this.attempt, line.seq);
    // number and time are drawn from attributes, so copying the log copies only its text
    div.innerHTML = `<a class="ln" href="${href}" data-n="${line.seq}" aria-label="line ${line.seq}"></a>` +
      `<span class="ts" data-ts="${clock(line.at)}"></span><span class="tx">${ansiHtml(line.text)}</span>`;
    return div;
  }

  append(lines) {
    const follow = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 4;
    this.box.append(...lines.map((l) => this.lineEl(l)));
    if (follow) this.box.scrollTop = this.box.scrollHeight;
  }

  // Load the newest PAGE lines (or from `from`), and follow a running step live.
  async load(live, from = 0) {
    if (this.loaded) return;
    this.loaded = true;
    const head = await api("GET", `${this.path}?from=1&limit=1&attempt=${this.attempt}`);
    const last = head.data.last || 0;
    this.first = from ? Math.max(1, Math.min(from, last - LOG_PAGE + 1)) : Math.max(1, last - LOG_PAGE + 1);
    if (this.first > 1) this.earlierButton();
    if (live) { this.follow(); return; }
    for (let at = this.first; ;) {
      const page = await api("GET", `${this.path}?from=${at}&attempt=${this.attempt}`);
      if (!page.ok) break;
      this.append(page.data.lines);
      if (!page.data.lines.length || page.data.ended) break;
      at = page.data.next;
    }
    if (!this.box.children.length || (this.box.children.length === 1 && this.more)) {
      this.box.insertAdjacentHTML("beforeend", '<div class="muted nolines">No output.</div>');
    }
  }

  // Server-Sent Events from `first`; the stream ends with an `end` event, after which
  // the server closes it: closing here only then lets the response finish cleanly.
  follow() {
    const source = new EventSource(`${this.path}/events?from=${this.first}&attempt=${this.attempt}`);
    this.source = source;
    source.onmessage = (event) => this.append([JSON.parse(event.data)]);
    source.addEventListener("end", () => { this.ended = true; });
    source.onerror = () => { if (this.ended) source.close(); };
  }

  earlierButton() {
    this.more = document.createElement("button");
    this.more.className = "earlier";
    this.more.textContent = "Show earlier lines";
    this.more.addEventListener("click", () => this.earlier());
    this.box.prepend(this.more);
  }

  async earlier(until = 0) {
    while (this.first > 1) {
      const from = Math.max(1, this.first - (until ? 10000 : LOG_PAGE));  // 10000: the API's most
      const page = await api("GET", `${this.path}?from=${from}&limit=${this.first - from}&attempt=${this.attempt}`);
      if (!page.ok) return;
      this.more.after(...page.data.lines.map((l) => this.lineEl(l)));
      this.first = from;
      if (!until || this.first <= until) break;
    }
    if (this.first === 1) this.more?.remove();
  }

  // Hide the lines without `text` (case-insensitive); the whole log is searched.
  async search(text) {
    const want = text.trim().toLowerCase();
    if (want && this.first > 1) await (this.everything ||= this.earlier(1));  // once, however fast one types
    let count = 0;
    for (const line of this.box.querySelectorAll(".line")) {
      const hit = !want || line.dataset.text.includes(want);
      line.classList.toggle("nomatch", !hit);
      if (hit && want) count++;
    }
    this.root.querySelector(".found").textContent = want ? `${count} matching line${count === 1 ? "" : "s"}` : "";
  }

  // Scroll to line `seq`, loading earlier lines if needed, and mark it.
  async reveal(seq) {
    if (seq < this.first) await this.earlier(seq);
    const line = this.box.querySelector(`.line[data-seq="${seq}"]`);
    if (!line) return false;
    this.root.closest(".steps, .attempt")?.querySelectorAll(".line.target").forEach((l) => l.classList.remove("target"));
    line.classList.add("target");
    this.box.scrollTop = line.offsetTop - this.box.clientHeight / 3;
    line.scrollIntoView({ block: "center" });
    return true;
  }
}

const LOG_PAGE = 1000;
