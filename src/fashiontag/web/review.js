// fashiontag review page: the queue of tagged photos, least certain first, reviewed from the keyboard.
// Every action goes to the server at once (it is the record); the page only shows what the server answered.
// Plain JavaScript, no dependencies, nothing loaded from outside this server.
"use strict";

(() => {
  const API = "/review/api";
  const UNTOUCHED = ["needs_review", "auto"];
  const state = { model: null, photos: [], progress: null, reviewers: [], cursor: 0, focus: {}, conflicts: {} };
  const $ = (sel) => document.querySelector(sel);
  const queue = $("#queue");
  const filters = { status: $("#f-status"), task: $("#f-task"), cls: $("#f-class"), reviewer: $("#f-reviewer") };
  const sortSelect = $("#sort");
  const reviewerInput = $("#reviewer");
  reviewerInput.value = localStorage.getItem("fashiontag.reviewer") || "";

  // ------------------------------------------------------------------ talking to the server
  async function call(path, body) {
    const res = await fetch(API + path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  function reviewer() {
    const name = reviewerInput.value.trim();
    if (!name) {
      notice("Type your name in the Reviewer box first: every action records who took it.");
      reviewerInput.focus();
    }
    return name;
  }

  function merge(photos) {
    for (const p of photos || []) {
      const i = state.photos.findIndex((q) => q.id === p.id);
      if (i >= 0) state.photos[i] = p;
    }
  }

  // One answer from a writing route: merge what changed, or show why it was refused.
  function settle(answer, photoId) {
    if (answer.status === 200) {
      merge(answer.body.photos || (answer.body.photo ? [answer.body.photo] : []));
      if (photoId !== undefined) delete state.conflicts[photoId];
      state.progress = answer.body.progress;
      notice("");
    } else if (answer.status === 409) {
      merge(answer.body.photo ? [answer.body.photo] : []);
      if (answer.body.photo) state.conflicts[answer.body.photo.id] = answer.body.message;
      notice(`Conflict: ${answer.body.message}`);
    } else {
      notice(answer.body.message || `HTTP ${answer.status}`);
    }
    render();
    return answer.status === 200;
  }

  async function load() {
    const { status, body } = await call("/queue");
    if (status !== 200) { notice(body.message || `HTTP ${status}`); return; }
    Object.assign(state, { model: body.model, photos: body.photos, progress: body.progress, reviewers: body.reviewers });
    fillFilters();
    const saved = Number(localStorage.getItem("fashiontag.cursor"));
    const list = visible();
    state.cursor = Math.max(0, list.findIndex((p) => p.id === saved));
    render();
    document.body.dataset.ready = "true";
  }

  // ------------------------------------------------------------------ decisions
  // Labels to write when `task` becomes `label`: a finer level of the hierarchy sets its parents, from the
  // combination seen in training that keeps the current parents where it can.
  function withParents(photo, task, label) {
    const out = { [task]: label };
    const h = state.model.hierarchy;
    const level = h ? h.tasks.indexOf(task) : -1;
    if (level < 0) return out;
    const matches = h.combinations.filter((c) => c[level] === label);
    if (!matches.length) return out;
    const current = h.tasks.map((t) => photo.tags[t].label);
    const best = matches.find((c) => c.every((l, i) => i <= level || l === current[i])) || matches[0];
    for (let i = level + 1; i < h.tasks.length; i++) out[h.tasks[i]] = best[i];
    return out;
  }

  function unseen(photo, labels) {
    const h = state.model.hierarchy;
    if (!h) return null;
    const combo = h.tasks.map((t) => (t in labels ? labels[t] : photo.tags[t].label));
    return h.combinations.some((c) => c.every((l, i) => l === combo[i])) ? null : combo;
  }

  async function decide(photo, labels) {
    const name = reviewer();
    if (!name) return false;
    let confirm = false;
    const combo = unseen(photo, labels);
    if (combo) {
      confirm = window.confirm(`${combo.join(" + ")} never occurs in the training catalog. Keep it?`);
      if (!confirm) return false;
    }
    const decisions = {};
    for (const [t, label] of Object.entries(labels)) decisions[t] = { label, version: photo.tags[t].version };
    return settle(await call(`/photos/${photo.id}/review`, { reviewer: name, decisions, confirm }), photo.id);
  }

  function acceptCard(photo) {
    const labels = {};
    for (const [t, tag] of Object.entries(photo.tags)) if (UNTOUCHED.includes(tag.status)) labels[t] = tag.label;
    return Object.keys(labels).length ? decide(photo, labels) : Promise.resolve(true);
  }

  async function undo() {
    const name = reviewer();
    if (name) settle(await call("/undo", { reviewer: name }));
  }

  async function bulkAccept() {
    const name = reviewer();
    if (!name) return;
    settle(await call("/bulk-accept", { reviewer: name }));
  }

  // ------------------------------------------------------------------ the queue shown
  const reviewed = (p) => Object.values(p.tags).every((t) => !UNTOUCHED.includes(t.status));
  const margin = (p) => Math.min(...Object.values(p.tags).filter((t) => UNTOUCHED.includes(t.status))
    .map((t) => t.confidence - t.threshold), Infinity);

  function visible() {
    const task = filters.task.value, cls = filters.cls.value, who = filters.reviewer.value;
    const show = filters.status.value;
    const list = state.photos.filter((p) => !p.error && (
      show === "all" || (show === "reviewed" ? reviewed(p)
        : Object.values(p.tags).some((t) => t.status === "needs_review" && (!task || t === p.tags[task]))))
      && (!cls || (task && p.tags[task].label === cls))
      && (!who || Object.values(p.tags).some((t) => t.reviewer === who)));
    const sort = sortSelect.value;
    const byTask = task || state.model.tasks[0];
    const keys = {
      uncertain: (a, b) => margin(a) - margin(b),
      confidence: (a, b) => a.tags[byTask].confidence - b.tags[byTask].confidence,
      class: (a, b) => a.tags[byTask].label.localeCompare(b.tags[byTask].label),
      queue: (a, b) => a.id - b.id,
    };
    return list.sort((a, b) => keys[sort](a, b) || a.id - b.id);
  }

  function fillFilters() {
    const task = filters.task.value;
    options(filters.task, state.model.tasks, "any");
    filters.task.value = task;
    fillClasses();
    const who = filters.reviewer.value;
    options(filters.reviewer, state.reviewers, "anyone");
    filters.reviewer.value = state.reviewers.includes(who) ? who : "";
  }

  function fillClasses() {
    const task = filters.task.value;
    options(filters.cls, task ? [...state.model.vocabs[task]].sort((a, b) => a.localeCompare(b)) : [], "any");
  }

  function options(select, values, none) {
    select.replaceChildren(new Option(none, ""), ...values.map((v) => new Option(v, v)));
  }

  function render() {
    const list = visible();
    state.cursor = Math.min(state.cursor, Math.max(0, list.length - 1));
    queue.replaceChildren(...list.map((p, i) => card(p, i === state.cursor)));
    const pr = state.progress;
    $("#progress").textContent = `${pr.reviewed} / ${pr.total} photos reviewed · ${pr.needs_review} need review`;
    if (list[state.cursor]) localStorage.setItem("fashiontag.cursor", String(list[state.cursor].id));
    const current = queue.querySelector(".card.current");
    if (current) current.scrollIntoView({ block: "nearest" });
  }

  function focusedTask(photo) {
    if (!(photo.id in state.focus)) {
      const first = Object.entries(photo.tags).find(([, t]) => t.status === "needs_review");
      state.focus[photo.id] = first ? first[0] : state.model.tasks[0];
    }
    return state.focus[photo.id];
  }

  function card(photo, current) {
    const el = document.createElement("article");
    el.className = "card" + (current ? " current" : "");
    el.dataset.id = photo.id;
    el.dataset.done = String(reviewed(photo));
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.src = `${API}/photos/${photo.id}/image`;
    img.alt = photo.item_id;
    img.addEventListener("click", () => zoom(img.src));
    thumb.append(img);
    const body = document.createElement("div");
    body.className = "body";
    const head = document.createElement("div");
    head.className = "card-head";
    head.textContent = photo.item_id;
    body.append(head);
    if (state.conflicts[photo.id]) {
      const c = document.createElement("div");
      c.className = "conflict";
      c.textContent = "conflict: " + state.conflicts[photo.id];
      body.append(c);
    }
    const table = document.createElement("table");
    table.className = "tags";
    const focus = focusedTask(photo);
    for (const [task, tag] of Object.entries(photo.tags)) {
      const tr = document.createElement("tr");
      tr.dataset.task = task;
      tr.dataset.status = tag.status;
      tr.classList.toggle("focus", current && task === focus);
      tr.title = `model: ${tag.model_label}; auto-accept at ${(tag.threshold * 100).toFixed(0)}%` +
        (tag.reviewer ? `; ${tag.status} by ${tag.reviewer}` : "");
      const cells = [task, tag.label, `${(tag.confidence * 100).toFixed(0)}%`, tag.status.replace("_", " ")];
      ["task", "label", "conf", "status-pill"].forEach((cls, i) => {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = cells[i];
        tr.append(td);
      });
      const runners = document.createElement("td");
      runners.className = "runners";
      // All nine for the tag in focus (keys 1-9); two elsewhere, to keep the cards readable.
      tag.runners_up.slice(0, current && task === focus ? 9 : 2).forEach(([label, conf], i) => {
        const s = document.createElement("span");
        s.textContent = `${i + 1} ${label} ${(conf * 100).toFixed(0)}%`;
        s.addEventListener("click", () => decide(photo, withParents(photo, task, label)));
        runners.append(s);
      });
      tr.append(runners);
      tr.addEventListener("click", () => { state.focus[photo.id] = task; select(photo); });
      table.append(tr);
    }
    body.append(table);
    el.append(thumb, body);
    return el;
  }

  function select(photo) {
    state.cursor = Math.max(0, visible().findIndex((p) => p.id === photo.id));
    render();
  }

  function zoom(src) {
    const z = $("#zoom");
    z.querySelector("img").src = src;
    z.hidden = false;
  }
  $("#zoom").addEventListener("click", () => { $("#zoom").hidden = true; });

  function notice(text) {
    const n = $("#notice");
    n.textContent = text;
    n.hidden = !text;
  }

  // ------------------------------------------------------------------ editing with type-ahead
  const editor = { el: $("#editor"), input: $("#editor-input"), list: $("#editor-list"), photo: null, task: null,
                   matches: [], active: 0 };

  function openEditor(photo, task) {
    editor.photo = photo;
    editor.task = task;
    const row = queue.querySelector(`.card.current tr[data-task="${task}"]`);
    const box = row ? row.getBoundingClientRect() : { left: 40, bottom: 80 };
    editor.el.style.left = `${Math.min(box.left, window.innerWidth - 280)}px`;
    editor.el.style.top = `${Math.min(box.bottom, window.innerHeight - 300)}px`;
    editor.input.value = "";
    editor.el.hidden = false;
    filterEditor();
    editor.input.focus();
  }

  function closeEditor() {
    editor.el.hidden = true;
    editor.input.blur();
  }

  // Classes in alphabetical order; what starts with the typed text comes before what merely contains it.
  function filterEditor() {
    const typed = editor.input.value.trim().toLowerCase();
    const all = [...state.model.vocabs[editor.task]].sort((a, b) => a.localeCompare(b));
    const starts = all.filter((c) => c.toLowerCase().startsWith(typed));
    editor.matches = starts.concat(all.filter((c) => !starts.includes(c) && c.toLowerCase().includes(typed)));
    editor.active = 0;
    drawEditor();
  }

  function drawEditor() {
    editor.list.replaceChildren(...editor.matches.map((c, i) => {
      const li = document.createElement("li");
      li.textContent = c;
      li.classList.toggle("active", i === editor.active);
      li.addEventListener("mousedown", (e) => { e.preventDefault(); choose(c); });
      return li;
    }));
    const active = editor.list.children[editor.active];
    if (active) active.scrollIntoView({ block: "nearest" });
  }

  function choose(label) {
    const { photo, task } = editor;
    closeEditor();
    if (label) decide(photo, withParents(photo, task, label));
  }

  editor.input.addEventListener("input", filterEditor);
  editor.input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const n = editor.matches.length;
      editor.active = n ? (editor.active + (e.key === "ArrowDown" ? 1 : n - 1)) % n : 0;
      drawEditor();
    } else if (e.key === "Enter") {
      e.preventDefault();
      choose(editor.matches[editor.active]);
    } else if (e.key === "Escape") {
      e.preventDefault();
      closeEditor();
    }
    e.stopPropagation();
  });
  editor.input.addEventListener("blur", () => { editor.el.hidden = true; });

  // ------------------------------------------------------------------ the keyboard
  function move(step) {
    const n = visible().length;
    state.cursor = Math.max(0, Math.min(n - 1, state.cursor + step));
    render();
  }

  document.addEventListener("keydown", (e) => {
    const tag = e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (!$("#zoom").hidden) { if (e.key === "Escape") $("#zoom").hidden = true; return; }
    const photo = visible()[state.cursor];
    const key = e.key;
    if (key === "j" || key === "ArrowDown" || key === "ArrowRight") move(1);
    else if (key === "k" || key === "ArrowUp" || key === "ArrowLeft") move(-1);
    else if (key === "u") undo();
    else if (!photo) return;
    else if (key === "Tab") {
      const tasks = Object.keys(photo.tags);
      const i = tasks.indexOf(focusedTask(photo));
      state.focus[photo.id] = tasks[(i + (e.shiftKey ? tasks.length - 1 : 1)) % tasks.length];
      render();
    } else if (/^[1-9]$/.test(key)) {
      const task = focusedTask(photo);
      const runner = photo.tags[task].runners_up[Number(key) - 1];
      if (runner) decide(photo, withParents(photo, task, runner[0]));
    } else if (key === "Enter") {
      acceptCard(photo).then((ok) => { if (ok && filters.status.value === "all") move(1); });
    } else if (key === "e") openEditor(photo, focusedTask(photo));
    else if (key === " ") zoom(`${API}/photos/${photo.id}/image`);
    else return;
    e.preventDefault();
  });

  // ------------------------------------------------------------------ controls
  reviewerInput.addEventListener("input", () => localStorage.setItem("fashiontag.reviewer", reviewerInput.value.trim()));
  filters.task.addEventListener("change", () => { fillClasses(); state.cursor = 0; render(); });
  for (const s of [filters.status, filters.cls, filters.reviewer, sortSelect]) {
    s.addEventListener("change", () => { state.cursor = 0; render(); s.blur(); });
  }
  $("#bulk").addEventListener("click", bulkAccept);

  window.fashiontag = { state, visible }; // for tests and the curious
  load();
})();
