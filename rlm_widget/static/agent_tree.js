// The front end of rlm_widget.AgentTree: an anywidget ESM in plain modern JavaScript (no build
// step, no dependencies, nothing fetched at run time). The standalone viewer (`rlm view`) inlines
// this same file and drives it with a small in-page model.
//
// Model state (traits, see rlm_widget/tree.py):
//   summary  — the run: run_id, task, model, status, elapsed_s, usage, answer, root (agent id),
//              live (events still arrive), controls (a run is attached: show the buttons),
//              stepping, waiting ([{agent_id, index, code}] at the step gate)
//   record   — the complete run record (DESIGN "Run record"); set offline and when a run ends,
//              and then the only source of the tree and the details
//   selected — the agent shown in the detail pane ("" shows the root)
// Custom messages while a run is live, kernel → browser:
//   {kind: "delta", seq, nodes: {id: changed fields}, touched: [ids], run: {changed fields}}
//   {kind: "snapshot", seq, nodes: {id: summary}, run}    everything, the answer to "sync"
//   {kind: "detail", agent_id, node}                       one agent's record node, on request
// browser → kernel:
//   {kind: "sync"} · {kind: "detail", agent_id} · {kind: "control", action, agent_id?, code?}
// An agent summary: {id, parent, depth, task, status, iterations, executed, calls, tokens, cost,
// elapsed_s, children: [ids], error}; summarizeRecord() builds the same from a record.

// Status glyphs that common fonts have (DejaVu, Liberation, system UI fonts).
const ICONS = {
  running: "◐",
  done: "✓",
  error: "✗",
  timeout: "◷",
  cancelled: "⊘",
  budget: "$",
};

const WAIT_ICON = "‖";

// Button icons as inline SVG (no icon font, no emoji font needed).
const SVG_PATHS = {
  pause: "M3 2h3v12H3zM10 2h3v12h-3z",
  step: "M2 2l8 6-8 6zM11 2h3v12h-3z",
  resume: "M3 2l11 6-11 6z",
  cancel: "M3 3h10v10H3z",
};

function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", "rlm-svg");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", SVG_PATHS[name]);
  svg.append(path);
  return svg;
}

// -- small helpers ---------------------------------------------------------------------------------

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for HTML. */
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Create an element: props are class, text, html, dataset, title, on<event> and attributes. */
function h(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "html") e.innerHTML = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function fmtInt(n) {
  n = Number(n) || 0;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${Math.round(n / 1e3)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function fmtCost(c) {
  c = Number(c) || 0;
  if (c === 0) return "$0";
  return c < 0.01 ? `$${c.toFixed(4)}` : `$${c.toFixed(2)}`;
}

function fmtSecs(s) {
  if (s == null || !Number.isFinite(Number(s))) return "—";
  s = Math.max(0, Number(s));
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 59.5) return `${Math.round(s)} s`;
  const total = Math.round(s);
  return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, "0")}s`;
}

function oneLine(s) {
  return String(s ?? "")
    .split(/\s+/)
    .join(" ")
    .trim();
}

function text(v) {
  if (v == null) return "";
  return typeof v === "string" ? v : JSON.stringify(v, null, 1);
}

// -- a small Python highlighter ---------------------------------------------------------------------

const KEYWORDS = new Set(
  (
    "False None True and as assert async await break case class continue def del elif else except " +
    "finally for from global if import in is lambda match nonlocal not or pass raise return try " +
    "while with yield"
  ).split(" "),
);
const BUILTINS = new Set(
  (
    "abs all any bool bytes callable dict dir divmod enumerate filter float format frozenset " +
    "getattr globals hasattr hash int isinstance issubclass iter len list locals map max min next " +
    "object open ord chr pow print range repr reversed round set setattr slice sorted str sum " +
    "super tuple type vars zip self Exception ValueError TypeError KeyError IndexError " +
    "RuntimeError AttributeError ImportError StopIteration NotImplementedError " +
    "rlm_query rlm_query_batched llm_query llm_query_batched FINAL FINAL_VAR SUBMIT SHOW_VARS " +
    "edit_file apply_patch answer context"
  ).split(" "),
);
const PY_TOKEN = new RegExp(
  [
    /(#[^\n]*)/.source, // 1 comment
    // 2 string, with an optional prefix; an unterminated string runs to the end
    /((?:\b[rRbBuUfF]{1,2})?(?:"""[\s\S]*?(?:"""|$(?![\s\S]))|'''[\s\S]*?(?:'''|$(?![\s\S]))|"(?:\\.|[^"\\\n])*(?:"|$)|'(?:\\.|[^'\\\n])*(?:'|$)))/
      .source,
    /(\b(?:0[xX][\da-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?\d+)?j?)|\.\d[\d_]*(?:[eE][+-]?\d+)?j?)/
      .source, // 3 number
    /(@[A-Za-z_][\w.]*)/.source, // 4 decorator
    /([A-Za-z_]\w*)/.source, // 5 name
  ].join("|"),
  "gm",
);

/** Python source as escaped HTML with <span class="rlm-py-…"> around tokens. */
export function highlightPython(code) {
  code = String(code ?? "");
  let out = "";
  let last = 0;
  let prev = "";
  for (const m of code.matchAll(PY_TOKEN)) {
    const [tok, comment, string, number, deco, name] = m;
    out += esc(code.slice(last, m.index));
    let cls = null;
    if (comment) cls = "c";
    else if (string) cls = "s";
    else if (number) cls = "n";
    else if (deco) cls = "d";
    else if (name) {
      if (KEYWORDS.has(name)) cls = "k";
      else if (prev === "def" || prev === "class") cls = "f";
      else if (BUILTINS.has(name)) cls = "b";
    }
    out += cls ? `<span class="rlm-py-${cls}">${esc(tok)}</span>` : esc(tok);
    if (name) prev = name;
    last = m.index + tok.length;
  }
  return out + esc(code.slice(last));
}

// -- records → summaries (the same shape as rlm_widget/summary.py sends) -----------------------------

function nodeSummary(node) {
  const u = node.usage || {};
  const t0 = Number(node.started_at);
  const t1 = Number(node.finished_at);
  const hasBoth = node.started_at != null && node.finished_at != null;
  return {
    id: node.agent_id,
    parent: node.parent_id ?? null,
    depth: node.depth ?? 0,
    task: node.task ?? "",
    status: node.status || "running",
    iterations: (node.iterations || []).length,
    executed: (node.iterations || []).reduce((t, it) => t + (it.code_blocks || []).length, 0),
    calls: u.llm_calls || 0,
    tokens: (u.prompt_tokens || 0) + (u.completion_tokens || 0),
    cost: u.cost_usd || 0,
    elapsed_s: hasBoth && Number.isFinite(t0) && Number.isFinite(t1) ? t1 - t0 : null,
    children: (node.children || []).map((c) => c.agent_id),
    error: node.error ? String(node.error).slice(0, 300) : null,
  };
}

/** {run, nodes, index} of a run record: the run summary, agent summaries, and id → record node. */
export function summarizeRecord(rec) {
  const nodes = {};
  const index = {};
  const stack = rec && rec.root ? [rec.root] : [];
  while (stack.length) {
    const n = stack.pop();
    if (!n || n.agent_id == null) continue;
    nodes[n.agent_id] = nodeSummary(n);
    index[n.agent_id] = n;
    for (const c of n.children || []) stack.push(c);
  }
  const run = {
    run_id: rec?.run_id,
    task: rec?.task,
    model: rec?.model,
    repo: rec?.repo,
    status: rec?.status || (rec?.root ? rec.root.status : "running"),
    elapsed_s: rec?.elapsed_s ?? null,
    usage: rec?.usage || {},
    answer: rec?.answer,
    root: rec?.root ? rec.root.agent_id : null,
    started_at: rec?.started_at,
  };
  return { run, nodes, index };
}

// -- the view -------------------------------------------------------------------------------------

class TreeView {
  constructor(model, el) {
    this.model = model;
    this.el = el;
    this.nodes = {};
    this.recvAt = {}; // agent id → performance.now() when its summary arrived (for running clocks)
    this.run = {};
    this.runRecvAt = performance.now();
    this.details = {}; // agent id → detail node (live runs)
    this.index = null; // agent id → record node (offline and finished runs)
    this.rows = new Map(); // agent id → {li, row, kids}
    this.collapsed = new Set();
    this.folds = new Map(); // detail-pane <details> key → open, as the user left it
    this.seq = -1;
    this.proposal = null;
    this.listeners = [];
    this.build();
    this.on("msg:custom", (msg) => this.onMessage(msg));
    this.on("change:record", () => this.loadState(true));
    this.on("change:summary", () => this.loadState(false));
    this.on("change:selected", () => this.renderSelection());
    this.loadState(true);
    if (this.run.live && !this.index) this.sync();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  on(name, fn) {
    this.model.on(name, fn);
    this.listeners.push([name, fn]);
  }

  destroy() {
    clearInterval(this.timer);
    for (const [name, fn] of this.listeners) this.model.off?.(name, fn);
    this.el.replaceChildren();
  }

  // ---- state
  loadState(full) {
    const rec = this.model.get("record");
    const run = this.model.get("summary") || {};
    if (rec && rec.root) {
      const s = summarizeRecord(rec);
      if (full || !this.index) {
        this.index = s.index;
        this.nodes = s.nodes;
        this.recvAt = {};
      }
      this.run = { ...s.run, ...run, live: Boolean(run.live) };
    } else {
      this.index = null;
      this.run = { ...this.run, ...run };
    }
    this.runRecvAt = performance.now();
    this.renderAll();
  }

  onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.kind === "snapshot" || msg.kind === "delta") {
      if (this.index) return; // the final record is authoritative
      const now = performance.now();
      if (msg.kind === "snapshot") {
        this.nodes = {};
        this.recvAt = {};
      } else if (!this.syncing && (this.seq < 0 || msg.seq !== this.seq + 1)) {
        this.sync(); // a delta was missed (e.g. sent before this view existed)
      }
      if (msg.kind === "snapshot") this.syncing = false;
      this.seq = msg.seq;
      const ids = [];
      for (const [id, patch] of Object.entries(msg.nodes || {})) {
        if (!this.nodes[id] && !("children" in patch)) continue; // a patch of an agent never seen: the snapshot brings it
        this.nodes[id] = { ...(this.nodes[id] || {}), ...patch };
        if ("elapsed_s" in patch) this.recvAt[id] = now;
        ids.push(id);
      }
      if (msg.run) {
        if ("waiting" in msg.run) {
          // rows that start or stop waiting at the step gate change their icon
          for (const w of [...(this.run.waiting || []), ...(msg.run.waiting || [])]) {
            if (!ids.includes(w.agent_id) && this.nodes[w.agent_id]) ids.push(w.agent_id);
          }
        }
        this.run = { ...this.run, ...msg.run };
        if ("elapsed_s" in msg.run) this.runRecvAt = now;
      }
      if (msg.kind === "snapshot") this.renderAll();
      else this.renderDelta(ids);
      const sel = this.shownAgent();
      const touched = msg.touched || ids;
      if (sel && (msg.kind === "snapshot" || touched.includes(sel))) this.requestDetail(sel);
      else if (sel && ids.includes(sel)) this.renderDetail();
    } else if (msg.kind === "detail" && msg.node) {
      this.details[msg.agent_id] = msg.node;
      if (msg.agent_id === this.shownAgent()) this.renderDetail();
    }
  }

  /** The agent of the detail pane: the selected one, else the root. */
  shownAgent() {
    return this.model.get("selected") || this.run.root || null;
  }

  sync() {
    this.syncing = true;
    this.model.send({ kind: "sync" });
  }

  requestDetail(id) {
    if (!this.index && id) this.model.send({ kind: "detail", agent_id: id });
  }

  select(id) {
    this.model.set("selected", id);
    this.model.save_changes();
  }

  control(action, extra = {}) {
    this.model.send({ kind: "control", action, ...extra });
  }

  elapsedOf(s) {
    if (s.elapsed_s == null) return null;
    if (s.status === "running" && this.run.live && this.recvAt[s.id] != null) {
      return s.elapsed_s + (performance.now() - this.recvAt[s.id]) / 1000;
    }
    return s.elapsed_s;
  }

  runElapsed() {
    const e = this.run.elapsed_s;
    if (e == null) return null;
    return this.run.live ? e + (performance.now() - this.runRecvAt) / 1000 : e;
  }

  // ---- skeleton
  build() {
    this.el.replaceChildren();
    this.badge = h("span", { class: "rlm-badge" });
    this.runTask = h("span", { class: "rlm-runtask" });
    this.runId = h("span", { class: "rlm-runid" });
    this.answer = h("div", { class: "rlm-answer" });
    this.totals = h("div", { class: "rlm-totals" });
    const btn = (action, label, title) =>
      h(
        "button",
        { class: "rlm-btn", type: "button", dataset: { action }, title },
        icon(action),
        label,
      );
    this.buttons = {
      pause: btn("pause", "Pause", "hold every agent before its next code runs"),
      step: btn("step", "Step", "let one iteration run (with the edited code, if changed)"),
      resume: btn("resume", "Continue", "leave step mode and run freely"),
      cancel: btn("cancel", "Cancel run", "cancel the whole run"),
    };
    this.buttons.pause.onclick = () => this.control("pause");
    this.buttons.resume.onclick = () => this.control("resume");
    this.buttons.cancel.onclick = () => this.control("cancel");
    this.buttons.step.onclick = () => {
      const code = this.stepCode.value;
      const changed = this.proposal && code !== this.proposal.code;
      this.control("step", { code: changed ? code : null });
    };
    this.gateLabel = h("span", { class: "rlm-gate-label" });
    this.controls = h(
      "div",
      { class: "rlm-controls" },
      Object.values(this.buttons),
      this.gateLabel,
    );
    this.stepCode = h("textarea", {
      class: "rlm-step-code",
      spellcheck: "false",
      rows: 6,
      "aria-label": "code to run at the next step",
    });
    this.stepBox = h("div", { class: "rlm-step" }, this.stepCode);
    this.header = h(
      "div",
      { class: "rlm-header" },
      h("div", { class: "rlm-headline" }, this.badge, this.runTask, this.runId),
      this.answer,
      this.totals,
      this.controls,
      this.stepBox,
    );
    this.treeList = h("ul", { class: "rlm-tree-root", role: "tree" });
    this.treePane = h("div", { class: "rlm-tree" }, this.treeList);
    this.detail = h("div", { class: "rlm-detail" });
    this.root = h(
      "div",
      { class: "rlm-agent-tree" },
      this.header,
      h("div", { class: "rlm-body" }, this.treePane, this.detail),
    );
    this.el.append(this.root);
  }

  // ---- rendering
  renderAll() {
    this.rows.clear();
    this.treeList.replaceChildren();
    const rootId = this.run.root ?? Object.values(this.nodes).find((n) => n.parent == null)?.id;
    if (rootId != null && this.nodes[rootId]) {
      this.treeList.append(this.ensureRow(rootId).li);
      this.placeChildren(rootId, true);
    } else {
      this.treeList.append(h("li", { class: "rlm-empty", text: "waiting for the first agent…" }));
    }
    this.renderHeader();
    this.renderSelection();
  }

  renderDelta(ids) {
    const rootId = this.run.root ?? Object.values(this.nodes).find((n) => n.parent == null)?.id;
    if (rootId != null && !this.rows.has(rootId) && this.nodes[rootId]) {
      this.treeList.replaceChildren(this.ensureRow(rootId).li);
    }
    for (const id of ids) {
      if (!this.nodes[id]) continue;
      this.fillRow(this.ensureRow(id));
    }
    for (const id of ids) {
      if (this.nodes[id]?.children?.length) this.placeChildren(id, false);
      const p = this.nodes[id]?.parent;
      if (p != null && this.rows.has(p) && !this.rows.get(id).li.isConnected) {
        this.placeChildren(p, false);
      }
    }
    this.renderHeader();
    this.markSelected();
  }

  ensureRow(id) {
    let r = this.rows.get(id);
    if (r) return r;
    const toggle = h("span", { class: "rlm-toggle", "aria-hidden": "true" });
    const row = h("div", { class: "rlm-row", role: "treeitem", tabindex: "0", dataset: { id } });
    const kids = h("ul", { class: "rlm-kids", role: "group" });
    const li = h("li", { class: "rlm-node", dataset: { id } }, row, kids);
    r = { li, row, kids, toggle };
    this.rows.set(id, r);
    row.addEventListener("click", (ev) => {
      if (ev.target === toggle && this.nodes[id]?.children?.length) {
        this.toggle(id);
      } else {
        this.select(id);
      }
    });
    row.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        this.select(id);
      } else if (ev.key === "ArrowLeft" && !this.collapsed.has(id)) {
        this.toggle(id);
      } else if (ev.key === "ArrowRight" && this.collapsed.has(id)) {
        this.toggle(id);
      }
    });
    this.fillRow(r);
    return r;
  }

  placeChildren(id, deep) {
    const r = this.rows.get(id);
    const s = this.nodes[id];
    if (!r || !s) return;
    const children = s.children || [];
    const kids = children.filter((c) => this.nodes[c]).map((c) => this.ensureRow(c).li);
    const current = Array.from(r.kids.children);
    if (current.length !== kids.length || current.some((li, i) => li !== kids[i])) {
      r.kids.replaceChildren(...kids);
    }
    this.fillRow(r);
    if (deep) for (const c of children) if (this.nodes[c]) this.placeChildren(c, true);
  }

  fillRow(r) {
    const id = r.row.dataset.id;
    const s = this.nodes[id];
    if (!s) return;
    const hasKids = s.children && s.children.length > 0;
    const collapsed = this.collapsed.has(id);
    r.toggle.textContent = hasKids ? (collapsed ? "▸" : "▾") : "";
    r.toggle.classList.toggle("rlm-leaf", !hasKids);
    r.li.classList.toggle("rlm-collapsed", collapsed);
    if (hasKids) r.row.setAttribute("aria-expanded", String(!collapsed));
    else r.row.removeAttribute("aria-expanded");
    const gate = (this.run.waiting || []).find((w) => w.agent_id === id);
    const waiting = Boolean(gate);
    r.row.className = `rlm-row rlm-s-${s.status}${waiting ? " rlm-waiting" : ""}`;
    r.row.dataset.status = s.status;
    if (gate) r.row.dataset.waiting = String(gate.index);
    else delete r.row.dataset.waiting;
    r.row.dataset.executed = String(s.executed ?? 0);
    const task = oneLine(s.task);
    r.meta = h("span", { class: "rlm-meta" }, this.metaText(s));
    r.row.replaceChildren(
      r.toggle,
      h("span", {
        class: "rlm-icon",
        title: s.error ? `${s.status}: ${s.error}` : s.status,
        text: waiting ? WAIT_ICON : ICONS[s.status] || "?",
      }),
      h("span", { class: "rlm-id", text: id }),
      h("span", { class: "rlm-task", title: s.task, text: task || "(no task)" }),
      r.meta,
    );
    const tail = this.run.live && s.status === "running" && s.live ? oneLine(s.live.text) : "";
    if (tail) {
      // the newest words of the reply being written (the row has room for about 40 characters)
      const shown = tail.length > 40 ? `…${tail.slice(-39)}` : tail;
      r.row.append(h("span", { class: "rlm-live-tail", title: "the reply being written", text: shown }));
    }
    if (id === this.model.get("selected")) r.row.classList.add("rlm-selected");
  }

  metaText(s) {
    const parts = [`${s.iterations} it`, fmtSecs(this.elapsedOf(s))];
    if (s.tokens) parts.push(`${fmtInt(s.tokens)} tok`);
    if (s.cost) parts.push(fmtCost(s.cost));
    return parts.join(" · ");
  }

  toggle(id) {
    if (this.collapsed.has(id)) this.collapsed.delete(id);
    else this.collapsed.add(id);
    const r = this.rows.get(id);
    if (r) this.fillRow(r);
  }

  tick() {
    if (!this.run.live) return;
    for (const [id, r] of this.rows) {
      const s = this.nodes[id];
      if (s && s.status === "running" && r.meta) r.meta.textContent = this.metaText(s);
    }
    this.renderTotals();
  }

  renderHeader() {
    const run = this.run;
    const status = run.status || "running";
    this.badge.className = `rlm-badge rlm-s-${status}`;
    this.badge.textContent = `${ICONS[status] || "?"} ${status}`;
    this.badge.dataset.status = status;
    this.runTask.textContent = oneLine(run.task) || "(no task)";
    this.runTask.title = run.task || "";
    this.runId.textContent = run.run_id ? `run ${run.run_id}` : "";
    const answer = run.live || run.answer == null ? "" : text(run.answer);
    this.answer.hidden = !answer;
    this.answer.title = answer;
    this.answer.replaceChildren(h("span", { class: "rlm-dim", text: "answer: " }), oneLine(answer));
    this.renderTotals();
    this.renderControls();
  }

  renderTotals() {
    const all = Object.values(this.nodes);
    const u = this.run.usage || {};
    const tokens = (u.prompt_tokens || 0) + (u.completion_tokens || 0);
    const items = [
      ["agents", all.length, "agents"],
      ["depth", all.reduce((m, n) => Math.max(m, n.depth || 0), 0), "max depth"],
      ["iterations", all.reduce((t, n) => t + (n.iterations || 0), 0), "iterations"],
      ["calls", u.llm_calls || 0, "LLM calls"],
      ["tokens", fmtInt(tokens), "tokens"],
      ...(u.cache_read_tokens ? [["cached", fmtInt(u.cache_read_tokens), "cached"]] : []),
      ["cost", fmtCost(u.cost_usd), "cost"],
      ["elapsed", fmtSecs(this.runElapsed()), "elapsed"],
    ];
    this.totals.replaceChildren(
      ...items.map(([k, v, label]) =>
        h("span", { class: "rlm-total", dataset: { k } }, h("b", { text: String(v) }), ` ${label}`),
      ),
    );
  }

  renderControls() {
    const run = this.run;
    const show = Boolean(run.controls && run.live);
    this.controls.hidden = !show;
    const waiting = run.waiting || [];
    const gated = Boolean(run.stepping) || waiting.length > 0;
    this.stepBox.hidden = !show || waiting.length === 0;
    if (!show) return;
    this.buttons.pause.disabled = Boolean(run.stepping);
    this.buttons.resume.disabled = !gated;
    if (waiting.length) {
      const w = waiting[0];
      const key = `${w.agent_id}@${w.index}`;
      if (!this.proposal || this.proposal.key !== key) {
        this.proposal = { key, code: String(w.code ?? "") };
        this.stepCode.value = this.proposal.code;
      }
      const more = waiting.length > 1 ? ` (+${waiting.length - 1} more waiting)` : "";
      this.gateLabel.textContent = `${WAIT_ICON} ${w.agent_id}, iteration ${w.index + 1}, waits to run the code below (edit it, then Step)${more}`;
    } else {
      this.proposal = null;
      this.gateLabel.textContent = run.stepping
        ? "paused: agents stop before their next code runs"
        : "";
    }
  }

  markSelected() {
    const sel = this.model.get("selected");
    for (const [id, r] of this.rows) r.row.classList.toggle("rlm-selected", id === sel);
  }

  renderSelection() {
    this.markSelected();
    const sel = this.shownAgent();
    if (sel && !this.index) this.requestDetail(sel);
    this.renderDetail();
  }

  renderDetail() {
    const id = this.shownAgent();
    const s = id ? this.nodes[id] : null;
    const scroll = this.detail.scrollTop;
    if (!s) {
      this.detail.replaceChildren(
        h("div", {
          class: "rlm-hint",
          text: "Select an agent to see its iterations, code, output and variables.",
        }),
      );
      return;
    }
    const node = this.index ? this.index[id] : this.details[id];
    const head = h(
      "div",
      { class: "rlm-d-head" },
      h("span", {
        class: `rlm-badge rlm-s-${s.status}`,
        text: `${ICONS[s.status] || "?"} ${s.status}`,
      }),
      h("span", { class: "rlm-d-id", text: id }),
      h("span", { class: "rlm-d-meta", text: `depth ${s.depth} · ${this.metaText(s)}` }),
    );
    if (this.run.controls && this.run.live && s.status === "running") {
      head.append(
        h(
          "button",
          {
            class: "rlm-btn rlm-btn-danger",
            type: "button",
            dataset: { action: "cancel-agent" },
            title: "cancel this agent and its sub-agents",
            onclick: () => this.control("cancel", { agent_id: id }),
          },
          icon("cancel"),
          "Cancel agent",
        ),
      );
    }
    const parts = [head, h("div", { class: "rlm-d-task", text: (node && node.task) || s.task })];
    if (s.parent != null) {
      parts.push(h("div", { class: "rlm-d-links" }, "parent: ", this.agentLink(s.parent)));
    }
    const live = this.liveView(s);
    if (!node) {
      parts.push(h("div", { class: "rlm-hint", text: "loading…" }));
      if (live) parts.push(live);
      this.detail.replaceChildren(...parts);
      this.followLive();
      return;
    }
    if (node.error)
      parts.push(h("pre", { class: "rlm-error rlm-d-error", text: text(node.error) }));
    if (node.result != null && node.result !== "") {
      parts.push(
        h("div", { class: "rlm-label", text: "Result" }),
        h("pre", { class: "rlm-result", text: text(node.result) }),
      );
    }
    const its = node.iterations || [];
    if (!its.length) parts.push(h("div", { class: "rlm-hint", text: "no iteration yet" }));
    its.forEach((it, i) => parts.push(this.iterationView(id, it, i === its.length - 1)));
    if (live) parts.push(live);
    const queries = node.llm_queries || [];
    if (queries.length) {
      parts.push(
        this.fold(
          `${id}:queries`,
          false,
          { class: "rlm-queries" },
          `llm_query calls (${queries.length})`,
          ...queries.map((q) =>
            h(
              "div",
              { class: "rlm-query" },
              h("pre", { class: "rlm-llm-text", text: text(q.prompt) }),
              q.error
                ? h("pre", { class: "rlm-error", text: text(q.error) })
                : h("pre", { class: "rlm-output", text: text(q.response) }),
            ),
          ),
        ),
      );
    }
    this.detail.replaceChildren(...parts);
    this.detail.scrollTop = scroll;
    this.followLive();
  }

  /** The reply the model is writing now (a live run streams it), or null. */
  liveView(s) {
    const live = this.run.live && s.status === "running" ? s.live : null;
    if (!live || !live.text) return null;
    return h(
      "div",
      { class: "rlm-it rlm-live", dataset: { index: live.index } },
      h("div", { class: "rlm-label", text: `Iteration ${Number(live.index) + 1} · writing…` }),
      h("pre", { class: "rlm-llm-text rlm-live-text", text: live.text }),
    );
  }

  /** Keep the end of the reply being written in view. */
  followLive() {
    const pre = this.detail.querySelector(".rlm-live-text");
    if (pre) pre.scrollTop = pre.scrollHeight;
  }

  /** A <details> that stays open or closed as the user left it across re-renders. */
  fold(key, openByDefault, props, title, ...children) {
    const d = h("details", props, h("summary", { text: title }), ...children);
    d.open = this.folds.has(key) ? this.folds.get(key) : openByDefault;
    d.addEventListener("toggle", () => {
      // the initial (programmatic) open fires "toggle" too; remember only what the user changed
      if (d.open !== openByDefault || this.folds.has(key)) this.folds.set(key, d.open);
    });
    return d;
  }

  agentLink(id) {
    const s = this.nodes[id];
    return h("a", {
      class: `rlm-link rlm-s-${s ? s.status : "running"}`,
      href: "#",
      dataset: { select: id },
      title: s ? oneLine(s.task) : id,
      text: `${s ? ICONS[s.status] || "?" : "…"} ${id}`,
      onclick: (ev) => {
        ev.preventDefault();
        this.select(id);
      },
    });
  }

  iterationView(id, it, last) {
    const key = `${id}@${it.index}`;
    const blocks = it.code_blocks || [];
    const spawned = blocks.flatMap((b) => b.spawned || []);
    const errors = blocks.filter((b) => b.error).length;
    const summary = [`Iteration ${Number(it.index) + 1}`];
    if (blocks.length) summary.push(`${blocks.length} code block${blocks.length > 1 ? "s" : ""}`);
    if (spawned.length) summary.push(`${spawned.length} sub-agent${spawned.length > 1 ? "s" : ""}`);
    if (errors) summary.push(`${errors} error${errors > 1 ? "s" : ""}`);
    if (it.pending_code != null) summary.push("waiting at the step gate");
    const d = this.fold(
      key,
      true,
      { class: "rlm-it", dataset: { index: it.index } },
      summary.join(" · "),
    );
    const llm = String(it.llm_response ?? "");
    const prose = llm.replace(/```[a-zA-Z0-9_-]*\n[\s\S]*?(```|$)/g, "").trim();
    if (prose) {
      d.append(
        h("div", { class: "rlm-label", text: "LLM" }),
        h("pre", { class: "rlm-llm-text", text: prose }),
      );
    }
    if (llm) {
      d.append(
        this.fold(
          `${key}:raw`,
          false,
          { class: "rlm-raw" },
          "full LLM response",
          h("pre", { class: "rlm-llm-text", text: llm }),
        ),
      );
    }
    for (const b of blocks) {
      const block = h("div", { class: "rlm-block" });
      const label = h("div", { class: "rlm-label" }, "code");
      if (b.elapsed_s != null)
        label.append(h("span", { class: "rlm-dim", text: ` · ${fmtSecs(b.elapsed_s)}` }));
      if (b.status && b.status !== "ok")
        label.append(h("span", { class: "rlm-dim", text: ` · ${b.status}` }));
      block.append(label, h("pre", { class: "rlm-code", html: highlightPython(b.code) }));
      if (b.output) block.append(h("pre", { class: "rlm-output", text: String(b.output) }));
      if (b.error) block.append(h("pre", { class: "rlm-error", text: String(b.error) }));
      if (b.spawned && b.spawned.length) {
        block.append(
          h(
            "div",
            { class: "rlm-d-links" },
            "spawned: ",
            ...b.spawned.map((c) => this.agentLink(c)),
          ),
        );
      }
      d.append(block);
    }
    if (!blocks.length && it.pending_code == null && !it.finished && llm) {
      // the code is running now (e.g. waiting for its sub-agents): show what the model wrote
      for (const m of llm.matchAll(/```(?:python|py)?[ \t]*\n([\s\S]*?)```/g)) {
        d.append(
          h("div", { class: "rlm-label", text: "code (running)" }),
          h("pre", {
            class: "rlm-code rlm-running-code",
            html: highlightPython(m[1].replace(/\n$/, "")),
          }),
        );
      }
    }
    if (it.pending_code != null) {
      d.append(
        h("div", { class: "rlm-label", text: "proposed code (waiting at the step gate)" }),
        h("pre", { class: "rlm-code rlm-pending", html: highlightPython(it.pending_code) }),
      );
    }
    const ns = it.namespace || [];
    if (ns.length) {
      const table = h(
        "table",
        { class: "rlm-ns-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["name", "type", "repr", "size"].map((c) => h("th", { text: c })),
          ),
        ),
        h(
          "tbody",
          {},
          ns.map((v) =>
            h(
              "tr",
              {},
              h("td", { class: "rlm-ns-name", text: v.name }),
              h("td", { class: "rlm-dim", text: v.type }),
              h("td", { class: "rlm-ns-repr", title: v.repr, text: v.repr }),
              h("td", { class: "rlm-dim", text: v.size == null ? "" : String(v.size) }),
            ),
          ),
        ),
      );
      d.append(
        this.fold(
          `${key}:ns`,
          last,
          { class: "rlm-ns" },
          `namespace after this iteration (${ns.length})`,
          table,
        ),
      );
    }
    return d;
  }
}

function render({ model, el }) {
  const view = new TreeView(model, el);
  return () => view.destroy();
}

function initialize() {}

export default { initialize, render };
