// fashiontag review page: the queue of tagged photos, least certain first, reviewed from the keyboard.
// Every action goes to the server at once (it is the record); the page only shows what the server answered.
// The server filters, sorts and pages the queue (GET /page, keyset pagination): the page holds the photos it was
// given so far, and asks for the next page when the reviewer reaches the end of them.
// Plain JavaScript, no dependencies, nothing loaded from outside this server.
"use strict";

(() => {
  const API = "/review/api";
  const UNTOUCHED = ["needs_review", "auto"];
  const STATUS_TEXT = { needs_review: "to review", auto: "auto", accepted: "accepted", corrected: "corrected" };
  // photos: those the server listed since the last refresh, in its order; order: their ids; next: where the next
  // page starts (null at the end); current: the id of the photo under the cursor. The cursor follows a photo, never
  // a position in the list. stale: a decision was taken since the list was fetched (see `refresh`).
  const PAGE = 50;
  // Review by task: one task's tag of many photos at once, as a grid of tiles.
  const GRID_PAGE = 60;
  const state = { model: null, photos: [], progress: null, reviewers: [], order: [], next: null, current: null,
                  focus: {}, conflicts: {}, stale: false, held: {} };
  const $ = (sel) => document.querySelector(sel);
  const queue = $("#queue");
  const filters = { status: $("#f-status"), task: $("#f-task"), cls: $("#f-class"), reviewer: $("#f-reviewer") };
  const sortSelect = $("#sort");
  const viewSelect = $("#view");
  const grid = () => viewSelect.value === "task";
  // The task a grid shows: the task filter's, else the first task.
  const gridTask = () => filters.task.value || state.model.tasks[0];
  const reviewerInput = $("#reviewer");
  const reviewerBox = $("#reviewer-box");
  reviewerInput.value = localStorage.getItem("fashiontag.reviewer") || "";

  // ------------------------------------------------------------------ talking to the server
  // With accounts, every write sends the session's CSRF token back (double submit: the server set it as a cookie).
  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)fashiontag_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function call(path, body) {
    const res = await fetch(API + path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  // The reviewer's name, or "" after asking for it. Asking puts the focus in the name box on purpose, with the box
  // and the notice saying so; the key that asked is never typed into it (the keyboard handler swallows it), and
  // Enter in the box gives the keyboard back to the queue.
  function reviewer() {
    if (state.user) return state.user;  // signed in: the server records the session's account
    const name = reviewerInput.value.trim();
    if (!name) {
      notice("Type your name in the Reviewer box and press Enter: every action records who took it.");
      reviewerBox.classList.add("missing");
      reviewerInput.focus();
    }
    return name;
  }

  const byId = (id) => state.photos.find((p) => p.id === id);

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
      state.stale = true;
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

  // With accounts in the review database the page first asks for a sign-in; signed in, the account replaces the
  // name box.
  async function signedIn() {
    const { status, body } = await call("/session");
    if (status !== 200 || !body.accounts) return true;
    if (!body.user) {
      $("#sign-in").hidden = false;
      document.querySelector("main").hidden = true;
      $("#progress").textContent = "sign in to review";
      $("#sign-in-name").focus();
      return false;
    }
    state.user = body.user;
    reviewerBox.hidden = true;
    $("#account-name").textContent = body.user;
    $("#account").hidden = false;
    return true;
  }

  $("#sign-in").addEventListener("submit", async (e) => {
    e.preventDefault();
    const answer = await call("/sign-in", { name: $("#sign-in-name").value, password: $("#sign-in-password").value });
    if (answer.status === 200) { location.reload(); return; }
    $("#sign-in-error").textContent = answer.body.message || `HTTP ${answer.status}`;
    $("#sign-in-error").hidden = false;
  });
  $("#sign-out").addEventListener("click", async () => { await call("/sign-out", {}); location.reload(); });

  async function load() {
    if (!(await signedIn())) return;
    const { status, body } = await call("/summary");
    if (status !== 200) { notice(body.message || `HTTP ${status}`); return; }
    Object.assign(state, { model: body.model, progress: body.progress, reviewers: body.reviewers });
    if (!state.model) { notice("This queue is empty: nothing was tagged into it yet."); return; }
    fillFilters();
    state.current = Number(localStorage.getItem("fashiontag.cursor"));
    await refresh(true);
    if (!reviewerInput.value.trim()) reviewerBox.classList.add("missing");
    await promiseWarning();
    setInterval(() => lease(true), LEASE_RENEW_MS);
    document.body.dataset.ready = "true";
  }

  // A task whose audited precision lies below what its threshold promises (GET /stats): a banner says so.
  async function promiseWarning() {
    const box = $("#promise-warning");
    const { status, body } = await call("/stats");
    const below = status === 200 ? body.below_promise : [];
    box.hidden = below.length === 0;
    box.textContent = below.map((t) => {
      const s = body.tasks[t];
      return `${t}: auto-accepted tags are right ${(s.precision * 100).toFixed(1)}% of ${s.audits} audits ` +
        `(at most ${(s.high * 100).toFixed(1)}%), below its promise of ${(s.promise * 100).toFixed(0)}%`;
    }).join(" · ");
    if (below.length) box.textContent += ": check its sure tags too, and recalibrate (fashiontag calibrate --reviews)";
  }

  // ------------------------------------------------------------------ decisions
  // Labels to write when `task` becomes `label`: a finer level of the hierarchy sets its parents, from the
  // combination seen in training that keeps the parents' `prefer`red labels (default: their current ones) where it
  // can. A level the photo holds no tag for (a catalog audit queues only the tasks it flagged) is neither matched
  // nor written: the catalog keeps its own label there.
  function withParents(photo, task, label, prefer = (tag) => tag.label) {
    const out = { [task]: label };
    const h = state.model.hierarchy;
    const level = h ? h.tasks.indexOf(task) : -1;
    if (level < 0) return out;
    const matches = h.combinations.filter((c) => c[level] === label);
    if (!matches.length) return out;
    const wanted = h.tasks.map((t) => (photo.tags[t] ? prefer(photo.tags[t]) || photo.tags[t].label : null));
    const best = matches.find((c) => c.every((l, i) => i <= level || wanted[i] === null || l === wanted[i]))
      || matches[0];
    for (let i = level + 1; i < h.tasks.length; i++) if (photo.tags[h.tasks[i]]) out[h.tasks[i]] = best[i];
    return out;
  }

  function unseen(photo, labels) {
    const h = state.model.hierarchy;
    if (!h) return null;
    const combo = h.tasks.map((t) => (t in labels ? labels[t] : photo.tags[t] ? photo.tags[t].label : null));
    return h.combinations.some((c) => c.every((l, i) => combo[i] === null || l === combo[i])) ? null
      : combo.filter((l) => l !== null);
  }

  // A catalog audit's tag (catalog_label set): keep the catalog's label (`c`), or take the model's suggestion
  // (`s`, the tag's model_label), its parents following the same side where they were flagged too.
  function keepCatalog(photo, task) {
    return decide(photo, withParents(photo, task, photo.tags[task].catalog_label, (tag) => tag.catalog_label));
  }

  function takeSuggestion(photo, task) {
    return decide(photo, withParents(photo, task, photo.tags[task].model_label, (tag) => tag.model_label));
  }

  // The model's probability of the catalog's label: the audit queues it among the runners-up.
  const catalogChance = (tag) => (tag.runners_up.find(([label]) => label === tag.catalog_label) || [null, 0])[1];
  const pct = (p) => `${(p * 100).toFixed(0)}%`;

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

  // Undo says what it took back (the decisions are the server's record: compare what the page showed before with
  // what the server answers now), and brings the photo back under the cursor when it was one photo.
  async function undo() {
    const name = reviewer();
    if (!name) return;
    const answer = await call("/undo", { reviewer: name });
    const before = new Map((answer.body.photos || []).map((p) => [p.id, byId(p.id)]));
    if (!settle(answer)) return;
    if (grid()) await refresh(true);  // the tiles taken back need review again: in the list once more
    const photos = answer.body.photos || [];
    if (photos.length === 1) {
      const p = photos[0], old = before.get(p.id);
      const changed = Object.entries(p.tags).filter(([t, tag]) => old && old.tags[t] &&
        (old.tags[t].label !== tag.label || old.tags[t].status !== tag.status));
      // A correction taken back reads "task new → old"; an acceptance, "accept of" its tags.
      const relabelled = changed.filter(([t, tag]) => old.tags[t].label !== tag.label)
        .map(([t, tag]) => `${t} ${old.tags[t].label} → ${tag.label}`);
      const accepted = changed.filter(([t, tag]) => old.tags[t].label === tag.label).map(([t]) => t);
      const what = relabelled.concat(!accepted.length ? [] : accepted.length === Object.keys(p.tags).length
        ? [`accept of all ${accepted.length} tags`] : [`accept of ${accepted.join(", ")}`]);
      toast(`undid: ${p.item_id}: ${what.join("; ") || "no change"}`);
      if (state.order.includes(p.id)) { state.current = p.id; render(); }
    } else {
      toast(`undid: ${photos.length} photos (${photos.map((p) => p.item_id).slice(0, 5).join(", ")}` +
            `${photos.length > 5 ? ", …" : ""})`);
    }
  }

  async function bulkAccept() {
    const name = reviewer();
    if (!name) return;
    settle(await call("/bulk-accept", { reviewer: name }));
  }

  // ------------------------------------------------------------------ the queue shown
  // As the server counts it (store.progress): a person decided on some tag and none still needs review; the sure
  // tags left as the model said them count as the model's.
  const reviewed = (p) => {
    const tags = Object.values(p.tags);
    return tags.length > 0 && !tags.some((t) => t.status === "needs_review")
      && tags.some((t) => !UNTOUCHED.includes(t.status));
  };
  // Who decided a tag: nobody while the tag is untouched (an undone tag is untouched again, whoever undid it).
  const decidedBy = (t) => (UNTOUCHED.includes(t.status) ? null : t.reviewer);
  // The reviewer the server serves this page to: it leaves out the photos other reviewers hold (leases), and
  // serves the second looks due from this one. Quietly "" until the name is set: moving around needs no name.
  const viewer = () => state.user || reviewerInput.value.trim();

  // What the server lists, as the filters and the sort say; after: where the page starts (null: the first).
  function query(after) {
    const q = new URLSearchParams({ status: filters.status.value, sort: sortSelect.value,
                                    limit: String(grid() ? GRID_PAGE : PAGE) });
    for (const [key, value] of [["task", grid() ? gridTask() : filters.task.value], ["cls", filters.cls.value],
                                ["decided_by", filters.reviewer.value], ["as", viewer()], ["after", after]]) {
      if (value) q.set(key, value);
    }
    return `/page?${q}`;
  }

  async function fetchPage(after) {
    const { status, body } = await call(query(after));
    if (status !== 200) { notice(body.message || `HTTP ${status}`); return null; }
    return body;
  }

  // The page is busy while a list is on its way, until it is drawn (tests wait for data-busy=false).
  async function busy(work) {
    document.body.dataset.busy = "true";
    try {
      return await work();
    } finally {
      document.body.dataset.busy = "false";
    }
  }

  // The ids of the list as a refresh would show it now (its first page), the shown one left as it is.
  async function fresh() {
    const body = await fetchPage(null);
    return body ? body.photos.map((p) => p.id) : null;
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

  // The list is fetched (filtered and sorted by the server) here, and only here: on loading, when the reviewer
  // changes a filter or the sort, and when they ask for it (the "refresh list" button); further pages are appended as
  // the reviewer reaches the end (more). Not after a decision: a correction changes the photo's "least certain
  // first" key, and a decision can take it out of "needs review", so sorting live would slide another product under
  // the cursor, where the next "1"-"9" or Enter would decide it unseen, and would make j/k skip or revisit photos.
  // A reviewer works down the list they were shown; photos they have done stay in place (marked done) until they
  // refresh it. keep: stay on the current photo if it is still listed, else the first.
  const refresh = (keep) => busy(async () => {
    const body = await fetchPage(null);
    if (!body) return;
    Object.assign(state, { photos: body.photos, order: body.photos.map((p) => p.id), next: body.next, stale: false });
    if (!keep || !state.order.includes(state.current)) state.current = state.order.length ? state.order[0] : null;
    render();
    lease();
  });

  // The next page of the list, appended; false at its end. A photo listed already (its key changed since, and
  // moved past the page's start) is not listed twice. One request at a time: keys pressed meanwhile wait for it.
  let coming = null;
  function more() {
    if (!state.next) return Promise.resolve(false);
    coming = coming || busy(async () => {
      const body = await fetchPage(state.next);
      if (!body) return false;
      const fresh = body.photos.filter((p) => !state.order.includes(p.id));
      state.photos.push(...fresh);
      state.order.push(...fresh.map((p) => p.id));
      state.next = body.next;
      render();
      return true;
    }).finally(() => { coming = null; });
    return coming;
  }

  // The photos shown, in the order of the last refresh.
  const shown = () => state.order.map(byId).filter((p) => p && !p.error);
  const current = () => shown().find((p) => p.id === state.current);

  // ------------------------------------------------------------------ several reviewers
  // The photo in front of the reviewer (a grid: every tile of it) is theirs for two minutes, renewed while they
  // stay on it, given back when they move (the lease names only what is in front of them) or act on it (the server
  // gives it back): the lists served to the others meanwhile leave it out. One another reviewer got first is
  // marked, and the cursor moves on (a grid's tile is marked and left out of "accept the page").
  const LEASE_RENEW_MS = 30000;
  let leased = null;
  async function lease(renew) {
    const name = viewer();
    const ids = grid() ? state.order.slice() : state.current === null ? [] : [state.current];
    if (!name || (!renew && ids.join() === leased)) return;
    leased = ids.join();
    const { status, body } = await call("/lease", { reviewer: name, photo_ids: ids });
    if (status !== 200 || !Object.keys(body.held).length) return;
    Object.assign(state.held, body.held);
    const id = ids[0];
    if (grid()) render();
    else if (id in body.held && state.current === id) {
      toast(`${byId(id) ? byId(id).item_id : id}: ${body.held[id]} is on it; on to the next photo`);
      move(1);
    }
  }

  function render() {
    const list = shown();
    if (!list.some((p) => p.id === state.current)) state.current = list.length ? list[0].id : null;
    queue.classList.toggle("grid", grid());
    queue.replaceChildren(...(grid() ? tiles(list) : list.map((p) => card(p, p.id === state.current))));
    $("#tile-detail").hidden = !grid();
    if (grid()) detail(current());
    const pr = state.progress;
    $("#progress").textContent = `${pr.reviewed} / ${pr.total} photos reviewed · ${pr.needs_review} need review`;
    if (state.current !== null) localStorage.setItem("fashiontag.cursor", String(state.current));
    $("#refresh").hidden = !state.stale;
    const el = queue.querySelector(".card.current, .tile.current");
    if (el) el.scrollIntoView({ block: "nearest" });
  }

  function focusedTask(photo) {
    if (grid()) return gridTask();
    if (!(photo.id in state.focus)) {
      const first = Object.entries(photo.tags).find(([, t]) => t.status === "needs_review");
      state.focus[photo.id] = first ? first[0] : Object.keys(photo.tags)[0];
    }
    return state.focus[photo.id];
  }

  // Review by task: the page's photos as tiles of one task's tag, grouped under their label as listed (sorted by
  // class: "all these are Navy Blue?"); a fixed tile shows its new label, and the current one its choices above.
  function tiles(list) {
    const task = gridTask();
    const out = [];
    let group = null;
    for (const photo of list) {
      const tag = photo.tags[task];
      if (!tag) continue;
      if (sortSelect.value === "class" && tag.label !== group) {
        group = tag.label;
        const h = document.createElement("h3");
        h.className = "group";
        h.textContent = `${group} · ${list.filter((p) => p.tags[task] && p.tags[task].label === group).length}`;
        out.push(h);
      }
      const el = document.createElement("article");
      el.className = "tile" + (photo.id === state.current ? " current" : "");
      el.dataset.id = photo.id;
      el.dataset.status = tag.status;
      if (state.held[photo.id]) el.dataset.heldBy = state.held[photo.id];
      const img = document.createElement("img");
      img.src = `${API}/photos/${photo.id}/image`;
      img.alt = photo.item_id;
      img.loading = "lazy";
      const caption = document.createElement("div");
      caption.className = "tile-label";
      caption.textContent = `${tag.label} ${pct(tag.confidence)}`;
      el.append(img, caption);
      el.addEventListener("click", () => select(photo));
      el.addEventListener("dblclick", () => zoom(photo));
      out.push(el);
    }
    return out;
  }

  // Above the grid: the current tile's photo, its tag, and the choices 1-9 (clickable), with what the keys do.
  function detail(photo) {
    const box = $("#tile-detail");
    if (!photo) { box.textContent = "nothing to review in this list"; return; }
    const task = gridTask(), tag = photo.tags[task];
    const head = document.createElement("div");
    head.className = "card-head";
    head.textContent = `${photo.item_id} · ${task}: ${tag.label} ${pct(tag.confidence)} · ${STATUS_TEXT[tag.status]}`;
    const choices = document.createElement("div");
    choices.className = "runners";
    if (tag.catalog_label) choices.append(...auditSpans(photo, task, tag));
    choices.append(...runnerSpans(photo, task, tag, 9));
    box.replaceChildren(head, choices);
  }

  // The page's tiles of the task, accepted as one action (their photos' other tasks untouched), then the next page.
  async function acceptPage() {
    const name = reviewer();
    if (!name) return;
    const task = gridTask();
    const versions = {};
    for (const p of shown()) if (p.tags[task] && !state.held[p.id]) versions[p.id] = p.tags[task].version;
    const answer = await call("/accept-task", { reviewer: name, task, versions });
    if (!settle(answer)) return;
    toast(`accepted ${answer.body.accepted.length} ${task} tags (u takes them back)`);
    await refresh(false);
  }

  function card(photo, current) {
    const el = document.createElement("article");
    el.className = "card" + (current ? " current" : "");
    el.dataset.id = photo.id;
    el.dataset.done = String(reviewed(photo));
    if (photo.second_look) el.dataset.secondLook = "true";
    if (state.held[photo.id]) el.dataset.heldBy = state.held[photo.id];
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.src = `${API}/photos/${photo.id}/image`;
    img.alt = photo.item_id;
    img.addEventListener("click", () => zoom(photo));
    thumb.append(img);
    const body = document.createElement("div");
    body.className = "body";
    const head = document.createElement("div");
    head.className = "card-head";
    head.textContent = photo.item_id;
    // A second look: another reviewer decided this photo; the model's proposal is shown, not their answer.
    if (photo.second_look) {
      const badge = document.createElement("span");
      badge.className = "badge second";
      badge.textContent = "second look";
      badge.title = "a photo drawn for two reviewers: your answer is kept beside the first one, to measure agreement";
      head.append(badge);
    }
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
      const who = decidedBy(tag);
      tr.title = `model: ${tag.model_label}; auto-accept at ${(tag.threshold * 100).toFixed(0)}%` +
        (who ? `; ${tag.status} by ${who}` : "");
      if (who) tr.dataset.reviewer = who;
      const cells = [task, tag.label, pct(tag.confidence), STATUS_TEXT[tag.status] || tag.status];
      ["task", "label", "conf", "status-pill"].forEach((cls, i) => {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = cells[i];
        tr.append(td);
      });
      // An audit: a sure tag a person checks all the same (it stays an audit once decided).
      if (tag.audit) {
        tr.dataset.audit = "true";
        const badge = document.createElement("span");
        badge.className = "badge audit";
        badge.textContent = "audit";
        badge.title = "a sure tag drawn at random for a person to check: how often auto-accepted tags are right";
        tr.querySelector(".status-pill").append(badge);
      }
      // A catalog audit's tag: the catalog's label under the model's suggestion (the tag's label until decided).
      if (tag.catalog_label) {
        tr.dataset.catalog = tag.catalog_label;
        const was = document.createElement("div");
        was.className = "catalog";
        was.textContent = `catalog: ${tag.catalog_label} ${pct(catalogChance(tag))}`;
        tr.querySelector(".label").append(was);
      }
      // Two runners-up beside each tag, to keep the cards readable; all nine of the tag in focus (keys 1-9) in a
      // row of their own under it, the card's full width, wrapped: every one the keys can pick is in sight.
      const inFocus = current && task === focus;
      const runners = document.createElement("td");
      runners.className = "runners";
      if (!inFocus) runners.append(...runnerSpans(photo, task, tag, 2));
      tr.append(runners);
      tr.addEventListener("click", () => { state.focus[photo.id] = task; select(photo); });
      table.append(tr);
      if (inFocus) {
        const row = document.createElement("tr");
        row.className = "choices";
        const td = document.createElement("td");
        td.colSpan = 5;
        td.className = "runners";
        if (tag.catalog_label) td.append(...auditSpans(photo, task, tag));
        td.append(...runnerSpans(photo, task, tag, 9));
        if (!tag.runners_up.length) td.textContent = "no runner-up: e to type a class";
        row.append(td);
        table.append(row);
      }
    }
    body.append(table);
    el.append(thumb, body);
    return el;
  }

  // The focused audit tag's two answers besides 1-9: c and s, spelt out, and clickable as the runners-up are.
  function auditSpans(photo, task, tag) {
    return [["c", `keep the catalog's ${tag.catalog_label}`, () => keepCatalog(photo, task)],
            ["s", `take the suggestion ${tag.model_label} ${pct(tag.confidence)}`, () => takeSuggestion(photo, task)]]
      .map(([key, text, act]) => {
        const s = document.createElement("span");
        s.className = "audit-choice";
        s.textContent = `${key} ${text}`;
        s.addEventListener("click", act);
        return s;
      });
  }

  function runnerSpans(photo, task, tag, n) {
    return tag.runners_up.slice(0, n).map(([label, conf], i) => {
      const s = document.createElement("span");
      s.textContent = `${i + 1} ${label} ${pct(conf)}`;
      s.addEventListener("click", () => decide(photo, withParents(photo, task, label)));
      return s;
    });
  }

  function select(photo) {
    state.current = photo.id;
    render();
    lease();
  }

  // The enlarged photo: the original file (the image route serves it as it is), at its own size, made smaller to fit
  // the window, or larger up to MAX_ZOOM times when it is small: a bigger upscale shows no more than blur.
  const MAX_ZOOM = 4;
  function zoom(photo) {
    const z = $("#zoom"), img = z.querySelector("img"), caption = z.querySelector("figcaption");
    const fit = () => {
      const w = img.naturalWidth, h = img.naturalHeight;
      if (!w || !h) return;
      const scale = Math.min(MAX_ZOOM, (window.innerWidth * 0.92) / w, (window.innerHeight * 0.86) / h);
      img.style.width = `${Math.floor(w * scale)}px`;
      img.style.height = `${Math.floor(h * scale)}px`;
      const shown = scale >= 1 ? `${+scale.toFixed(1)}×` : `${Math.round(scale * 100)}%`;
      caption.textContent = `${photo.item_id} · original file ${w} × ${h} px, shown at ${shown}`;
    };
    img.onload = fit;
    img.style.width = img.style.height = "";
    caption.textContent = photo.item_id;
    img.alt = photo.item_id;
    img.src = `${API}/photos/${photo.id}/image`;
    z.hidden = false;
    if (img.complete) fit();
  }
  $("#zoom").addEventListener("click", () => { $("#zoom").hidden = true; });

  function notice(text) {
    const n = $("#notice");
    n.textContent = text;
    n.hidden = !text;
  }

  // A short message that goes away by itself: what an action did (undo), as opposed to the notice (what went wrong).
  let toastTimer = null;
  function toast(text) {
    const t = $("#toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
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
  // To the next (previous) photo of the list as shown: its order does not change under the reviewer (see refresh);
  // past its last photo, the next page comes first. Photos another reviewer got first are passed over.
  async function move(step) {
    let ids = shown().map((p) => p.id).filter((id) => !state.held[id] || id === state.current);
    if (!ids.length) return;
    const from = state.current;
    if (!grid() && step > 0 && ids.indexOf(from) + step >= ids.length && (await more())) {
      ids = shown().map((p) => p.id).filter((id) => !state.held[id] || id === from);
    }
    if (state.current !== from) return;  // the reviewer moved meanwhile
    const i = Math.max(0, ids.indexOf(from));
    state.current = ids[Math.max(0, Math.min(ids.length - 1, i + step))];
    render();
    if (!grid()) lease();
  }

  // Tiles in a row of the grid as laid out now: up and down move by a row.
  function perRow() {
    const tops = [...queue.querySelectorAll(".tile")].map((t) => t.offsetTop);
    return Math.max(1, tops.filter((top) => top === tops[0]).length);
  }

  document.addEventListener("keydown", (e) => {
    const tag = e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (!$("#zoom").hidden) { if (e.key === "Escape" || e.key === " ") { $("#zoom").hidden = true; e.preventDefault(); } return; }
    const photo = current();
    const key = e.key;
    if (grid() && (key === "ArrowDown" || key === "ArrowUp")) move(key === "ArrowDown" ? perRow() : -perRow());
    else if (key === "j" || key === "ArrowDown" || key === "ArrowRight") move(1);
    else if (key === "k" || key === "ArrowUp" || key === "ArrowLeft") move(-1);
    else if (key === "u") undo();
    else if (key === "a" && grid()) acceptPage();
    else if (!photo) return;
    else if (key === "Tab" && !grid()) {
      const tasks = Object.keys(photo.tags);
      const i = tasks.indexOf(focusedTask(photo));
      state.focus[photo.id] = tasks[(i + (e.shiftKey ? tasks.length - 1 : 1)) % tasks.length];
      render();
    } else if (/^[1-9]$/.test(key)) {
      const task = focusedTask(photo);
      const runner = photo.tags[task].runners_up[Number(key) - 1];
      if (runner) decide(photo, withParents(photo, task, runner[0]));
    } else if ((key === "c" || key === "s") && photo.tags[focusedTask(photo)].catalog_label) {
      (key === "c" ? keepCatalog : takeSuggestion)(photo, focusedTask(photo));
    } else if (key === "Enter") {
      // On to the next photo only if the one accepted is still the current one (a click may have moved meanwhile);
      // in a grid, Enter accepts the tile's tag alone.
      const accept = grid() ? decide(photo, { [gridTask()]: photo.tags[gridTask()].label }) : acceptCard(photo);
      accept.then((ok) => { if (ok && state.current === photo.id) move(1); });
    } else if (key === "e") openEditor(photo, focusedTask(photo));
    else if (key === " ") zoom(photo);
    else return;
    e.preventDefault();
  });

  // ------------------------------------------------------------------ controls
  // The name box: typed into only on purpose (a click, or the prompt above); Enter (or Escape) sets the name and gives
  // the keyboard back to the queue, so no shortcut meant for the queue lands in the name.
  reviewerInput.addEventListener("input", () => {
    localStorage.setItem("fashiontag.reviewer", reviewerInput.value.trim());
    reviewerBox.classList.toggle("missing", !reviewerInput.value.trim());
  });
  reviewerInput.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" && e.key !== "Escape") return;
    e.preventDefault();
    e.stopPropagation();
    const name = reviewerInput.value.trim();
    reviewerInput.value = name;
    if (!name) return;
    reviewerInput.blur();
    notice("");
    toast(`reviewing as ${name}`);
  });
  reviewerInput.addEventListener("focus", () => reviewerBox.classList.add("editing"));
  reviewerInput.addEventListener("blur", () => reviewerBox.classList.remove("editing"));
  filters.task.addEventListener("change", () => { fillClasses(); refresh(false); filters.task.blur(); });
  // By task: grouped by the proposed label unless the reviewer sorts otherwise; photo by photo: least certain first.
  viewSelect.addEventListener("change", () => {
    sortSelect.value = grid() ? "class" : "uncertain";
    refresh(false);
    viewSelect.blur();
  });
  for (const s of [filters.status, filters.cls, filters.reviewer, sortSelect]) {
    s.addEventListener("change", () => { refresh(false); s.blur(); });
  }
  $("#refresh").addEventListener("click", (e) => { refresh(true); e.currentTarget.blur(); });
  $("#bulk").addEventListener("click", (e) => { e.currentTarget.blur(); bulkAccept(); });

  window.fashiontag = { state, fresh, shown, current }; // for tests and the curious
  load();
})();
