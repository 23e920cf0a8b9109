// The pipeline editor: a textarea over a highlighted copy of its text, line numbers,
// Tab to indent (Esc, then Tab, leaves the field), validation as you type, problems
// that jump to their place, and a prompt before leaving unsaved changes. After app.js.
"use strict";

const VALUE_RE = /(\$\{\{.*?\}\})|("(?:[^"\\]|\\.)*"|'[^']*')/g;
const KEY_RE = /^(\s*(?:-\s+)?)([^\s:#"'{[][^:#]*?)(:)(?=\s|$)/;

function paintValue(text) {
  let out = "", at = 0;
  for (const m of text.matchAll(VALUE_RE)) {
    out += esc(text.slice(at, m.index)) + `<span class="${m[1] ? "hl-x" : "hl-s"}">${esc(m[0])}</span>`;
    at = m.index + m[0].length;
  }
  return out + esc(text.slice(at));
}

// Where a line's comment starts (a `#` outside quotes, at the start or after a space).
function commentAt(line) {
  let quote = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) { if (c === quote) quote = ""; }
    else if (c === '"' || c === "'") quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) return i;
  }
  return -1;
}

function paintLine(line) {
  const cut = commentAt(line);
  const code = cut < 0 ? line : line.slice(0, cut), comment = cut < 0 ? "" : line.slice(cut);
  const key = code.match(KEY_RE);
  const head = key ? `${esc(key[1])}<span class="hl-k">${esc(key[2])}</span>:` : "";
  const rest = key ? code.slice(key[0].length) : code;
  return head + paintValue(rest) + (comment ? `<span class="hl-c">${esc(comment)}</span>` : "");
}

function editor(root) {
  const source = root.querySelector("#source"), gutter = root.querySelector(".gutter"), shade = root.querySelector(".shade");
  const problems = document.getElementById("problems"), state = document.getElementById("state");
  let bad = new Set(), timer = 0, saved = source.value, leaving = false;
  const sync = () => { gutter.scrollTop = source.scrollTop; shade.scrollTop = source.scrollTop; shade.scrollLeft = source.scrollLeft; };
  const paint = () => {
    const lines = source.value.split("\n");
    gutter.innerHTML = lines.map((_, i) => `<span class="${bad.has(i + 1) ? "bad" : ""}">${i + 1}</span>`).join("\n");
    shade.innerHTML = lines.map(paintLine).join("\n") + "\n";
    sync();
  };
  const show = (list) => {
    bad = new Set(list.map((p) => p.line));
    problems.innerHTML = list.map((p) =>
      `<li><button type="button" class="jump" data-line="${p.line}" data-column="${p.column}">line ${p.line}, column ${p.column}: ${esc(p.message)}</button></li>`).join("");
    state.textContent = list.length ? `${list.length} problem(s)` : "valid";
    paint();
  };
  const check = async () => show((await api("POST", "/api/validate", { source: source.value })).data.problems || []);
  const changed = () => { paint(); clearTimeout(timer); timer = setTimeout(check, 250); };
  source.addEventListener("input", changed);
  source.addEventListener("scroll", sync);

  // Tab and Shift+Tab indent and dedent the selected lines by two spaces; after Esc,
  // Tab moves focus as usual, so the keyboard is never trapped here.
  let escaped = false;
  source.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { escaped = true; return; }
    if (event.key !== "Tab" || escaped) { escaped = false; return; }
    event.preventDefault();
    const { value, selectionStart: start, selectionEnd: end } = source;
    const from = value.lastIndexOf("\n", start - 1) + 1;
    const block = value.slice(from, end);
    const lines = block.split("\n");
    const next = event.shiftKey ? lines.map((l) => l.replace(/^ {1,2}/, "")) : lines.map((l) => "  " + l);
    source.setRangeText(next.join("\n"), from, end, "preserve");
    const moved = next[0].length - lines[0].length;
    source.setSelectionRange(Math.max(from, start + moved), end + next.join("\n").length - block.length);
    changed();
  });

  problems.addEventListener("click", (event) => {
    const button = event.target.closest("button.jump");
    if (!button) return;
    const line = Number(button.dataset.line), column = Number(button.dataset.column);
    const lines = source.value.split("\n");
    const offset = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, column - 1);
    source.focus();
    source.setSelectionRange(offset, offset);
    const height = parseFloat(getComputedStyle(source).lineHeight) || 19.5;
    source.scrollTop = Math.max(0, (line - 4) * height);
    sync();
  });

  window.addEventListener("beforeunload", (event) => {
    if (!leaving && source.value !== saved) { event.preventDefault(); event.returnValue = ""; }
  });

  document.getElementById("save").addEventListener("click", async () => {
    const project = root.dataset.project, name = root.dataset.name;
    const base = `/api/projects/${encodeURIComponent(project)}/pipelines`;
    const result = name
      ? await api("PUT", `${base}/${encodeURIComponent(name)}`, { source: source.value })
      : await api("POST", base, { source: source.value });
    if (result.ok) {
      saved = source.value;
      leaving = true;
      location.href = `/p/${encodeURIComponent(project)}/pipelines/${encodeURIComponent(result.data.name)}`;
    } else {
      show(result.data.problems || [{ line: 1, column: 1, message: result.data.error || "not saved" }]);
    }
  });
  paint();
  check();
}
