// fashiontag web page: pick or drop photos, see the model's tags, correct them, download CSV.
// Plain JavaScript, no dependencies, nothing loaded from outside this server.
"use strict";

(() => {
  const TOP_K = 3;
  // A task's column name for people: "articleType" -> "Article type", "sleeve_length" -> "Sleeve length".
  const taskName = (task) => {
    const words = task.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/[_-]+/g, " ").toLowerCase();
    return words.charAt(0).toUpperCase() + words.slice(1);
  };
  // threshold null: the model's own auto-accept threshold per task, until the slider moves.
  const state = { model: null, items: [], nextId: 1, threshold: null };
  const $ = (sel) => document.querySelector(sel);
  const results = $("#results");

  // ------------------------------------------------------------------ model
  async function loadModel() {
    try {
      const res = await fetch("/v1/model");
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      state.model = await res.json();
    } catch (err) {
      $("#model-info").textContent = "model unavailable";
      showNotice(`Could not load the model description (${err.message}). Is the server running?`);
      return;
    }
    const m = state.model;
    const acc = m.metrics && m.metrics.val_acc ? m.metrics.val_acc : {};
    const accText = m.tasks.filter((t) => acc[t] != null)
      .map((t) => `${taskName(t)} ${(acc[t] * 100).toFixed(0)}%`).join(" · ");
    const info = $("#model-info");
    info.textContent = "";
    const line1 = document.createElement("div");
    line1.append("model ", bold(m.version), ` · ${m.arch || "?"} · ${m.tasks.length} tasks`);
    info.append(line1);
    if (accText) {
      const line2 = document.createElement("div");
      line2.textContent = `validation accuracy: ${accText}`;
      info.append(line2);
    }
    document.body.dataset.ready = "true";
  }

  function bold(text) {
    const b = document.createElement("b");
    b.textContent = text;
    return b;
  }

  function showNotice(text) {
    const n = $("#notice");
    n.textContent = text;
    n.hidden = !text;
  }

  // ------------------------------------------------------------------ intake
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    if (!state.model) { showNotice("The model is not loaded yet; try again in a moment."); return; }
    showNotice("");
    const items = files.map((file) => ({
      id: state.nextId++, file, name: file.name || "photo", url: URL.createObjectURL(file),
      status: "pending", tags: null, colours: [], title: "", error: "", corrected: {},
    }));
    state.items.push(...items);
    items.forEach(render);
    updateSummary();
    upload(items);
  }

  // Requests stay within the server's limits: at most max_files photos and max_upload_bytes each.
  function chunk(items) {
    const limits = state.model.limits || {};
    const maxFiles = Math.max(1, Math.min(limits.max_files || 16, 16));
    const maxBytes = (limits.max_upload_bytes || 8 << 20) * 0.9;
    const maxFile = limits.max_file_bytes || Infinity;
    const groups = [];
    let group = [], bytes = 0;
    for (const item of items) {
      if (item.file.size > maxFile) {
        fail(item, `larger than the ${(maxFile / 1048576).toFixed(0)} MiB limit per photo`);
        continue;
      }
      if (group.length && (group.length >= maxFiles || bytes + item.file.size > maxBytes)) {
        groups.push(group);
        group = [];
        bytes = 0;
      }
      group.push(item);
      bytes += item.file.size;
    }
    if (group.length) groups.push(group);
    return groups;
  }

  // The server judges which tags need review, against the threshold sent with the photos.
  async function upload(items) {
    for (const group of chunk(items)) {
      const form = new FormData();
      group.forEach((item) => form.append("files", item.file, item.name));
      if (state.model.takes_titles) group.forEach((item) => form.append("titles", item.title));
      const threshold = state.threshold;
      let body = null, status = 0;
      try {
        const judge = threshold === null ? "" : `&min_confidence=${threshold}`;
        const res = await fetch(`/v1/tag?top_k=${TOP_K}&partial=true&colours=true${judge}`,
          { method: "POST", body: form });
        status = res.status;
        body = await res.json();
      } catch (err) {
        group.forEach((item) => fail(item, `request failed: ${err.message}`));
        continue;
      }
      if (status === 200 && Array.isArray(body.results)) {
        body.results.forEach((r, i) => {
          const item = group[i];
          if (!item || !state.items.includes(item)) return; // removed meanwhile
          if (r.error) fail(item, r.error);
          else {
            Object.assign(item, { status: "done", tags: r.tags, colours: r.colours || [], threshold });
            render(item);
          }
        });
      } else {
        const perFile = new Map((body && body.files || []).map((f) => [f.index, f.reason]));
        const message = (body && body.message) || `HTTP ${status}`;
        group.forEach((item, i) => fail(item, perFile.get(i) || message));
      }
      updateSummary();
      // The threshold moved while these were on their way: ask again, so every flag shown is the server's.
      if (threshold !== state.threshold) upload(group.filter((item) => item.status === "done"));
    }
  }

  function fail(item, message) {
    item.status = "error";
    item.error = message;
    render(item);
    updateSummary();
  }

  // ------------------------------------------------------------------ labels
  function modelLabel(item, task) {
    return item.tags[task].label;
  }

  function finalLabel(item, task) {
    return task in item.corrected ? item.corrected[task] : modelLabel(item, task);
  }

  function correct(item, task, value) {
    if (value === modelLabel(item, task)) delete item.corrected[task];
    else item.corrected[task] = value;
    // Keep the category hierarchy consistent: an article type seen under one subcategory/category sets them too.
    const h = state.model.hierarchy;
    if (h && task === h.tasks[0]) {
      const parents = h.combinations.filter((c) => c[0] === value);
      if (parents.length === 1) {
        h.tasks.slice(1).forEach((parentTask, j) => {
          const parent = parents[0][j + 1];
          if (finalLabel(item, parentTask) !== parent) {
            if (parent === modelLabel(item, parentTask)) delete item.corrected[parentTask];
            else item.corrected[parentTask] = parent;
          }
        });
      }
    }
    render(item);
    updateSummary();
  }

  // ------------------------------------------------------------------ rendering
  function render(item) {
    let card = results.querySelector(`[data-id="${item.id}"]`);
    if (!card) {
      card = $("#card-template").content.firstElementChild.cloneNode(true);
      card.dataset.id = item.id;
      card.dataset.file = item.name;
      const img = card.querySelector(".thumb img");
      img.addEventListener("error", () => img.parentElement.classList.add("broken"));
      img.src = item.url;
      img.alt = item.name;
      card.querySelector(".file-name").textContent = item.name;
      card.querySelector(".file-name").title = item.name;
      card.querySelector(".remove").addEventListener("click", () => remove(item));
      // A photo + title model reads the title too: a changed title tags the photo again.
      const title = card.querySelector(".title");
      title.hidden = !state.model.takes_titles;
      title.setAttribute("aria-label", `title of ${item.name}`);
      title.addEventListener("change", () => {
        item.title = title.value.trim();
        item.status = "pending";
        render(item);
        upload([item]);
      });
      results.append(card);
    }
    card.classList.toggle("done", item.status === "done");
    card.classList.toggle("error", item.status === "error");
    card.querySelector(".state").textContent =
      item.status === "error" ? `Could not tag: ${item.error}` : item.status === "pending" ? "tagging…" : "";
    card.querySelector(".badge").hidden = !Object.keys(item.corrected).length;
    const tbody = card.querySelector("tbody");
    tbody.textContent = "";
    const swatches = card.querySelector(".colours");
    swatches.textContent = "";
    if (item.status !== "done") return;
    for (const task of state.model.tasks) tbody.append(tagRow(item, task));
    for (const c of item.colours) {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = c.hex;
      swatch.style.flexGrow = Math.max(1, Math.round(c.share * 100));
      swatch.title = `${c.class || c.hex} · ${(c.share * 100).toFixed(0)}% of the product`;
      swatches.append(swatch);
    }
  }

  function tagRow(item, task) {
    const t = item.tags[task];
    const shown = finalLabel(item, task);
    const tr = document.createElement("tr");
    tr.dataset.task = task;
    tr.classList.toggle("corrected", task in item.corrected);
    const review = t.needs_review && !(task in item.corrected);
    tr.classList.toggle("review", review);
    const notes = [];
    if (review) notes.push(`needs review: less sure than ${(t.threshold * 100).toFixed(0)}%`);
    if (t.top && t.top.length > 1) {
      notes.push("model: " + t.top.map((c) => `${c.label} ${(c.confidence * 100).toFixed(0)}%`).join(", "));
    }
    if (notes.length) tr.title = notes.join("\n");
    const name = document.createElement("td");
    name.className = "task";
    name.textContent = taskName(task);

    const pick = document.createElement("td");
    const select = document.createElement("select");
    select.setAttribute("aria-label", `${taskName(task)} of ${item.name}`);
    const options = [...state.model.classes[task]];
    if (!options.includes(shown)) options.unshift(shown);
    for (const label of options) {
      const o = document.createElement("option");
      o.value = label;
      o.textContent = label;
      select.append(o);
    }
    select.value = shown;
    select.addEventListener("change", () => correct(item, task, select.value));
    pick.append(select);

    const conf = document.createElement("td");
    conf.className = "conf";
    const bar = document.createElement("div");
    bar.className = "bar " + (t.confidence >= 0.8 ? "good" : t.confidence >= 0.5 ? "fair" : "weak");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(2, t.confidence * 100).toFixed(1)}%`;
    bar.append(fill);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuenow", t.confidence.toFixed(3));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    conf.append(bar);
    const pct = document.createElement("td");
    pct.className = "pct";
    pct.textContent = `${(t.confidence * 100).toFixed(0)}%`;
    tr.append(name, pick, conf, pct);
    return tr;
  }

  function remove(item) {
    URL.revokeObjectURL(item.url);
    state.items = state.items.filter((i) => i !== item);
    const card = results.querySelector(`[data-id="${item.id}"]`);
    if (card) card.remove();
    updateSummary();
  }

  function updateSummary() {
    const n = state.items.length;
    const done = state.items.filter((i) => i.status === "done").length;
    const errors = state.items.filter((i) => i.status === "error").length;
    const pending = n - done - errors;
    const edits = state.items.reduce((s, i) => s + Object.keys(i.corrected).length, 0);
    const reviews = state.items.filter((i) => i.status === "done").reduce((s, i) => s + state.model.tasks
      .filter((t) => i.tags[t].needs_review && !(t in i.corrected)).length, 0);
    const parts = [`${n} photo${n === 1 ? "" : "s"}`, `${done} tagged`];
    if (pending) parts.push(`${pending} waiting`);
    if (errors) parts.push(`${errors} could not be read`);
    if (reviews) parts.push(`${reviews} tag${reviews === 1 ? "" : "s"} to review`);
    if (edits) parts.push(`${edits} tag${edits === 1 ? "" : "s"} corrected`);
    $("#summary").textContent = n ? parts.join(" · ") : "No photos yet.";
    $("#download").disabled = !(done + errors);
    $("#clear").disabled = !n;
    document.body.dataset.pending = String(pending);
  }

  // ------------------------------------------------------------------ CSV
  function csvCell(value) {
    let s = value == null ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(s)) s = "'" + s; // a spreadsheet must not run a file name as a formula
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  function toCsv() {
    const tasks = state.model.tasks;
    const header = ["file", "title"];
    tasks.forEach((t) => header.push(t, `${t}_confidence`, `${t}_needs_review`, `${t}_model`, `${t}_corrected`));
    header.push("colours", "error");
    const lines = [header];
    for (const item of state.items) {
      const row = [item.name, item.title];
      for (const t of tasks) {
        if (item.status === "done") {
          row.push(finalLabel(item, t), item.tags[t].confidence.toFixed(4), item.tags[t].needs_review ? "yes" : "",
            modelLabel(item, t), t in item.corrected ? "yes" : "");
        } else row.push("", "", "", "", "");
      }
      row.push(item.colours.map((c) => `${c.hex} ${(c.share * 100).toFixed(0)}% ${c.class}`.trim()).join("; "),
        item.status === "error" ? item.error : "");
      lines.push(row);
    }
    return lines.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }

  function download() {
    const blob = new Blob([toCsv()], { type: "text/csv;charset=utf-8" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "fashiontag-tags.csv";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ------------------------------------------------------------------ wiring
  const drop = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((ev) => drop.addEventListener(ev, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer && e.dataTransfer.files);
  });
  // A photo dropped anywhere else on the page must not make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  const slider = $("#threshold");
  slider.addEventListener("input", () => { $("#threshold-value").textContent = `${slider.value}%`; });
  slider.addEventListener("change", () => {
    state.threshold = Number(slider.value) / 100;
    upload(state.items.filter((item) => item.status === "done"));
  });
  $("#download").addEventListener("click", download);
  $("#clear").addEventListener("click", () => { [...state.items].forEach(remove); showNotice(""); });

  window.fashiontag = { state, toCsv }; // for tests and the curious
  loadModel();
})();
