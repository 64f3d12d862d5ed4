// The standalone run viewer (`rlm view`). rlm_widget/viewer.py appends this file to
// agent_tree.js inside one inline module script, so `render` and `ICONS` below are that file's.
// The data is embedded in the page's rlm-data JSON element (works from a file URL), or fetched
// from the results directory when the page is served over HTTP (`rlm view --no-embed`).
(() => {
  const data = JSON.parse(document.getElementById("rlm-data").textContent);
  const runsEl = document.getElementById("rlm-v-runs");
  const treeEl = document.getElementById("rlm-v-tree");
  const countEl = document.getElementById("rlm-v-count");
  const records = data.records || {};
  let index = data.index || [];
  let current = null; // {id, dispose}

  /** A minimal anywidget model over a record: get/set/on/off/send/save_changes. */
  function recordModel(record) {
    const state = { record, summary: {}, selected: "" };
    const listeners = new Map();
    return {
      get: (k) => state[k],
      set(k, v) {
        state[k] = v;
        for (const fn of listeners.get(`change:${k}`) || []) fn();
      },
      save_changes() {},
      on(name, fn) {
        if (!listeners.has(name)) listeners.set(name, new Set());
        listeners.get(name).add(fn);
      },
      off(name, fn) {
        listeners.get(name)?.delete(fn);
      },
      send() {},
    };
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function listRuns() {
    countEl.textContent = `${index.length} run${index.length === 1 ? "" : "s"}`;
    const table = document.createElement("table");
    table.className = "rlm-v-table";
    const head = document.createElement("tr");
    for (const c of ["", "started", "task", "agents", "time", "cost"]) {
      const th = document.createElement("th");
      th.textContent = c;
      head.append(th);
    }
    table.append(head);
    for (const r of index) {
      const tr = document.createElement("tr");
      tr.className = `rlm-v-run rlm-s-${r.status || "running"}`;
      tr.dataset.run = r.run_id;
      tr.tabIndex = 0;
      tr.title = r.task || "";
      const u = r.usage || {};
      const started = String(r.started_at || "").replace("T", " ");
      tr.append(
        cell(ICONS[r.status] || "?", "rlm-v-icon"),
        cell(started, "rlm-v-when"),
        cell(
          String(r.task || "")
            .split(/\s+/)
            .join(" ") || r.run_id,
          "rlm-v-task",
        ),
        cell(r.agents == null ? "" : String(r.agents), "rlm-v-num"),
        cell(r.elapsed_s == null ? "" : `${Number(r.elapsed_s).toFixed(1)} s`, "rlm-v-num"),
        cell(u.cost_usd ? `$${Number(u.cost_usd).toFixed(4)}` : "", "rlm-v-num"),
      );
      tr.addEventListener("click", () => show(r.run_id));
      tr.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") show(r.run_id);
      });
      table.append(tr);
    }
    runsEl.replaceChildren(table);
    if (!index.length) {
      runsEl.append(
        Object.assign(document.createElement("p"), {
          className: "rlm-v-note",
          textContent: "No runs in index.json yet.",
        }),
      );
    }
  }

  async function loadRecord(entry) {
    if (records[entry.run_id]) return records[entry.run_id];
    const resp = await fetch(`${data.base || ""}${entry.file || `${entry.run_id}.detail.json`}`);
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const rec = await resp.json();
    records[entry.run_id] = rec;
    return rec;
  }

  async function show(runId) {
    const entry = index.find((r) => r.run_id === runId);
    if (!entry) return;
    for (const tr of runsEl.querySelectorAll("tr.rlm-v-run")) {
      tr.classList.toggle("rlm-v-selected", tr.dataset.run === runId);
    }
    if (location.hash !== `#run=${runId}`) history.replaceState(null, "", `#run=${runId}`);
    if (current) current.dispose();
    current = null;
    treeEl.replaceChildren(
      Object.assign(document.createElement("p"), {
        className: "rlm-v-note",
        textContent: "loading…",
      }),
    );
    let rec;
    try {
      rec = await loadRecord(entry);
    } catch (err) {
      treeEl.replaceChildren(
        Object.assign(document.createElement("p"), {
          className: "rlm-v-note rlm-v-error",
          textContent: `Could not load ${entry.file}: ${err}. From a file URL, use the default embedded viewer (rlm view without --no-embed), or serve the results directory with python -m http.server.`,
        }),
      );
      return;
    }
    treeEl.replaceChildren();
    const host = document.createElement("div");
    treeEl.append(host);
    const t0 = performance.now();
    const dispose = render({ model: recordModel(rec), el: host });
    const ms = performance.now() - t0;
    treeEl.dataset.renderMs = ms.toFixed(1);
    treeEl.dataset.run = runId;
    current = { id: runId, dispose };
  }

  async function start() {
    if (!data.embedded) {
      try {
        const resp = await fetch(`${data.base || ""}index.json`, { cache: "no-store" });
        if (resp.ok) {
          const fresh = await resp.json();
          index = Array.isArray(fresh) ? fresh : fresh.runs || index;
        }
      } catch (err) {
        console.warn("rlm view: index.json not fetched; using the list built into the page", err);
      }
    }
    listRuns();
    const first = index.find((r) => r.run_id === hashRun()) || index[0];
    if (first) await show(first.run_id);
    document.body.dataset.ready = "1";
    window.addEventListener("hashchange", () => {
      const wanted = hashRun();
      if (wanted && wanted !== current?.id) show(wanted);
    });
  }

  function hashRun() {
    return decodeURIComponent((location.hash.match(/run=([^&]+)/) || [])[1] || "");
  }

  start();
})();
