// moonlora studio: one page, six views; everything it loads comes from this studio.
"use strict";
const TOKEN = document.querySelector('meta[name="moonlora-token"]').content;
const $ = (sel) => document.querySelector(sel);
const state = { view: "runs", run: null, listen: { offset: 0 }, choices: null, poll: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, { method = "GET", json, body, type } = {}) {
  const headers = {};
  if (method !== "GET") headers["X-Moonlora-Token"] = TOKEN;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  else if (type) headers["Content-Type"] = type;
  const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function flash(message, kind = "bad") {
  const box = $("#flash");
  box.textContent = message; box.className = "flash " + kind; box.hidden = !message;
}

function q(params) {
  return Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined && v !== false)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&");
}

// --- views ---------------------------------------------------------------------------------------------------------
function show(view) {
  state.view = view;
  document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== "view-" + view; });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  flash("");
  if (view === "runs") loadRuns();
  if (view === "listen") loadChoices().then(loadListen);
  if (view === "record" || view === "correct" || view === "try" || view === "train") loadChoices();
  if (view === "train") loadJobs();
}

async function loadChoices() {
  try {
    const c = await api("/api/choices");
    const runs = await api("/api/runs");
    state.choices = c;
    fillSelect($("#rec-prompts"), [...c.prompts.map((p) => [p, p]), ...c.domains.map((d) => ["domain:" + d, "template: " + d])]);
    const models = [["base", "base (" + c.model + ")"], ...c.adapters.map((a) => [a, "adapter of " + a])];
    fillSelect($("#cor-model"), models);
    fillSelect($("#try-adapter"), c.adapters.map((a) => [a, a]));
    const folders = [...runs.runs.map((r) => [r.path, r.path + " (run)"]), ...runs.scored.filter((s) => !runs.runs.some((r) => s.startsWith(r.path + "/"))).map((s) => [s, s + " (transcribe)"])];
    fillSelect($("#listen-folder"), folders, true);
    fillSelect($("#compare-b"), folders, true);
    $("#manifest-list").replaceChildren(...c.manifests.map((m) => el("option", { value: m })));
    $("#grid-list").replaceChildren(...c.grids.map((m) => el("option", { value: m })));
    if (!$("#tr-model").value) $("#tr-model").value = c.model;
  } catch (error) { flash(error.message); }
}

function fillSelect(select, options, keep = true) {
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (keep && options.some(([v]) => v === previous)) select.value = previous;
}

// --- Runs ----------------------------------------------------------------------------------------------------------
function badge(text) { return el("span", { class: "badge s-" + text }, text); }

function progressText(row) {
  const p = row.progress;
  return `${p.phase} ${p.steps}/${p.max_steps}`;
}

async function loadRuns() {
  let active = true;
  try {
    const data = await api("/api/runs");
    const body = $("#runs-table tbody");
    body.replaceChildren(...data.runs.map((r) => el("tr", { class: "run" + (state.run === r.path ? " selected" : ""), "data-path": r.path, onclick: () => openRun(r.path) },
      el("td", {}, el("code", {}, r.path)), el("td", {}, r.sweep || "-"), el("td", { class: "state" }, badge(r.state)),
      el("td", { class: "progress" }, progressText(r), r.state === "running" ? el("progress", { max: r.progress.max_steps, value: r.progress.steps }) : null),
      el("td", { class: "num" }, r.baseline), el("td", { class: "num" }, r.tuned),
      el("td", { class: "verdict" }, r.verdict || "-"), el("td", {}, r.started_at))));
    if (!data.runs.length) body.append(el("tr", {}, el("td", { colspan: 8 }, "No run folders under the root yet: start one from Train.")));
    $("#sweeps-box").hidden = !data.sweeps.length;
    $("#sweeps tbody").replaceChildren(...data.sweeps.map((w) => el("tr", { class: "sweep" },
      el("td", {}, el("code", {}, w.path)),
      el("td", {}, w.error ? w.error : `${w.runs}: ` + Object.entries(w.statuses).map(([k, v]) => `${v} ${k}`).join(", ")),
      el("td", {}, ...(w.groups || []).map((g) => el("div", {}, `${g.group}: `, badge(g.passed ? "pass" : "fail")))))));
    $("#runs-unreadable").replaceChildren(...data.unreadable.map((u) => el("p", { class: "alert" }, `${u.path}: ${u.reason}`)));
    if (state.run && data.runs.some((r) => r.path === state.run)) {
      try { await openRun(state.run, false); } catch (error) { flash(error.message); }
    } else if (state.run) {
      $("#run-detail").hidden = true;  // started, its record not written yet
    }
    active = data.runs.some((r) => r.state === "running") || data.jobs.some((j) => j.state === "running");
  } catch (error) { flash(error.message); }
  schedulePoll(active);
}

function schedulePoll(active) {
  clearTimeout(state.poll);
  if (state.view === "runs") state.poll = setTimeout(loadRuns, active ? 1500 : 5000);
}

async function openRun(path, scroll = true) {
  state.run = path;
  const d = await api("/api/run?" + q({ path }));
  $("#run-detail").hidden = false;
  $("#run-title").textContent = d.path;
  $("#run-status").replaceChildren(badge(d.state), " ", d.status_text);
  $("#run-progress").replaceChildren(el("span", { class: "progress" }, "progress: " + progressText(d)),
    d.state === "running" ? el("progress", { max: d.progress.max_steps, value: d.progress.steps }) : "");
  $("#run-notes").replaceChildren(...d.notes.map((n) => el("p", { class: "alert" }, n)));
  $("#run-overall").textContent = d.verdict || "-";
  $("#verdicts tbody").replaceChildren(...d.verdicts.map((v) => el("tr", {}, el("td", {}, v.criterion), el("td", {}, badge(v.outcome.replace(" ", "-"))), el("td", {}, v.detail))));
  const columns = d.manifests.length ? Object.keys(d.manifests[0]) : [];
  $("#run-manifests thead").replaceChildren(el("tr", {}, ...columns.map((c) => el("th", {}, c.replace("WER", d.metric)))));
  $("#run-manifests tbody").replaceChildren(...d.manifests.map((m) => el("tr", {}, ...columns.map((c) => el("td", {}, m[c])))));
  $("#run-plots").innerHTML = d.plots;  // the report's own SVG plots, made by the server from the record
  $("#run-legs").replaceChildren(...d.legs.map((l) => el("li", {}, el("code", {}, l.command), ` ${l.started_at} ${l.status || ""}`)));
  $("#run-log-box").hidden = !d.log;
  $("#run-log").textContent = d.log || "";
  $("#run-listen").onclick = () => { state.listenFolder = d.path; show("listen"); };
  $("#run-resume").hidden = !["died", "interrupted"].includes(d.state);
  $("#run-resume").onclick = async () => {
    try { await api("/api/run/resume", { method: "POST", json: { path: d.path } }); flash("Resumed " + d.path, "ok"); loadRuns(); }
    catch (error) { flash(error.message); }
  };
  document.querySelectorAll("#runs-table tr.run").forEach((tr) => tr.classList.toggle("selected", tr.dataset.path === path));
  if (scroll) $("#run-detail").scrollIntoView({ block: "nearest" });
}

// --- Listen --------------------------------------------------------------------------------------------------------
function diffNode(diff) {
  if (!diff.length) return el("em", {}, "(empty)");
  const parts = [];
  for (const [tag, words] of diff) {
    if (!words) continue;
    parts.push(el("span", { class: "d-" + tag }, words), " ");
  }
  return el("span", { class: "diff" }, parts);
}

function sideCell(side, cls) {
  if (!side) return el("td", { class: cls }, "-");
  return el("td", { class: cls }, diffNode(side.diff),
    el("div", { class: "meta" }, `WER ${side.wer.toFixed(3)} · ${side.errors} error(s)`, ...side.flags.map((f) => el("span", { class: "flag" }, f))));
}

async function loadListen(append = false) {
  const folder = state.listenFolder || $("#listen-folder").value;
  if (state.listenFolder) { $("#listen-folder").value = state.listenFolder; state.listenFolder = null; }
  if (!folder) { $("#listen-summary").textContent = "No run or transcribe folder under the root yet."; return; }
  if (!append) state.listen.offset = 0;
  const params = { folder, set: $("#listen-set").value, sort: $("#listen-sort").value, flag: $("#listen-flag").value,
    speaker: $("#listen-speaker").value, min: $("#listen-min").value, max: $("#listen-max").value, q: $("#listen-q").value,
    changed: $("#listen-changed").checked ? "1" : "", offset: state.listen.offset, limit: 50 };
  try {
    const data = await api("/api/listen?" + q(params));
    fillSelect($("#listen-flag"), [["", "any"], ...data.flags.map((f) => [f, f])]);
    fillSelect($("#listen-speaker"), [["", "any"], ...data.speakers.map((s) => [s, s])]);
    document.querySelectorAll(".col-base").forEach((n) => { n.hidden = !data.sides.baseline; });
    $("#listen-summary").textContent = `${data.matching} of ${data.total} clip(s) match · showing ${Math.min(data.offset + data.rows.length, data.matching)}`;
    const rows = data.rows.map((r) => el("tr", { class: "clip", "data-id": r.id },
      el("td", { class: "clipid" }, el("code", {}, r.id), el("div", { class: "meta" }, `${r.duration.toFixed(2)} s`, r.speaker ? ` · ${r.speaker}` : "")),
      el("td", {}, r.audio !== null ? el("audio", { controls: "", preload: "none", src: "/files/" + r.audio.split("/").map(encodeURIComponent).join("/") }) : el("em", {}, "outside the root")),
      el("td", { class: "ref" }, r.ref),
      data.sides.baseline ? sideCell(r.baseline, "hyp-base") : null,
      sideCell(r.tuned, "hyp-tuned")));
    const body = $("#listen-rows tbody");
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    state.listen.offset = data.offset + data.rows.length;
    $("#listen-more").hidden = state.listen.offset >= data.matching;
  } catch (error) { flash(error.message); }
}

async function compareRuns() {
  const a = $("#listen-folder").value, b = $("#compare-b").value;
  const out = $("#compare-out");
  out.textContent = "comparing…";
  try {
    const c = await api("/api/compare?" + q({ a, b, set: $("#listen-set").value }));
    const label = (c.metric || "wer").toUpperCase();
    out.replaceChildren(
      el("p", { class: "facts" }, `A ${a}: ${label} ${c.baseline_wer.toFixed(4)} · B ${b}: ${label} ${c.tuned_wer.toFixed(4)} · B − A ${c.delta >= 0 ? "+" : ""}${c.delta.toFixed(4)} [${c.ci_low.toFixed(4)}, ${c.ci_high.toFixed(4)}] · ${c.differing_clips} clip(s) differ · B ${c.non_inferior ? "is" : "is NOT shown"} non-inferior within ${c.margin}`),
      el("table", { id: "compare-rows" }, el("thead", {}, el("tr", {}, el("th", {}, "Clip"), el("th", {}, "Audio"), el("th", {}, "Reference"), el("th", {}, "A"), el("th", {}, "B"))),
        el("tbody", {}, ...c.top_differences.slice(0, 200).map((d) => el("tr", {},
          el("td", {}, el("code", {}, d.utt_id), el("div", { class: "meta" }, `${d.wer_a.toFixed(3)} → ${d.wer_b.toFixed(3)}`)),
          el("td", {}, d.audio !== null ? el("audio", { controls: "", preload: "none", src: "/files/" + d.audio }) : "-"),
          el("td", {}, d.ref), el("td", {}, diffNode(d.diff_a)), el("td", {}, diffNode(d.diff_b)))))));
  } catch (error) { out.textContent = ""; flash(error.message); }
}

// --- recording (shared by Record, Correct, Try) --------------------------------------------------------------------
class Mic {
  async start(onstart) {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
    const types = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"];
    const mimeType = types.find((t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t)) || "";
    this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : {});
    this.chunks = [];
    this.recorder.ondataavailable = (e) => { if (e.data.size) this.chunks.push(e.data); };
    this.recorder.onstart = onstart;
    this.recorder.start();
  }
  stop() {
    return new Promise((resolve) => {
      this.recorder.onstop = () => {
        this.stream.getTracks().forEach((t) => t.stop());
        resolve(new Blob(this.chunks, { type: this.recorder.mimeType || "audio/webm" }));
      };
      this.recorder.stop();
    });
  }
  get recording() { return this.recorder && this.recorder.state === "recording"; }
}

function toggler(button, live, onBlob) {
  const mic = new Mic();
  button.addEventListener("click", async () => {
    try {
      if (mic.recording) {
        button.disabled = true;
        const blob = await mic.stop();
        button.textContent = "Record"; live.textContent = ""; live.classList.remove("on");
        await onBlob(blob);
        button.disabled = false;
      } else {
        await mic.start(() => { live.textContent = "● recording"; live.classList.add("on"); });
        button.textContent = "Stop";
      }
    } catch (error) { button.disabled = false; flash(error.message); }
  });
}

// --- Record --------------------------------------------------------------------------------------------------------
function showRecord(s, message) {
  state.record = s;
  $("#rec-session").hidden = false;
  $("#rec-total").textContent = s.prompts.length;
  $("#rec-count").textContent = s.rows;
  if (s.next === null) {
    $("#rec-index").textContent = "-"; $("#rec-prompt").textContent = "All prompts recorded."; $("#rec-toggle").disabled = true;
  } else {
    $("#rec-index").textContent = s.next + 1; $("#rec-prompt").textContent = s.prompts[s.next]; $("#rec-toggle").disabled = false;
  }
  if (message !== undefined) $("#rec-status").textContent = message;
}

async function startRecording() {
  const choice = $("#rec-prompts").value || "";
  const json = { folder: $("#rec-folder").value, speaker: $("#rec-speaker").value };
  if (choice.startsWith("domain:")) { json.domain = choice.slice(7); json.count = Number($("#rec-count-prompts").value); }
  else if (choice) json.prompts_file = choice;
  try {
    const s = await api("/api/record/start", { method: "POST", json });
    showRecord(s, s.resumed ? `Resumed: ${s.rows} clip(s) already kept.` : "New recording folder.");
    $("#cor-folder").value = $("#rec-folder").value;
  } catch (error) { flash(error.message); }
}

async function keepTake(blob) {
  const s = state.record;
  try {
    const r = await api("/api/record/take?" + q({ folder: s.folder, prompt: s.next, speaker: $("#rec-speaker").value }), { method: "POST", body: blob, type: blob.type });
    showRecord(r, `Kept ${r.kept.id}: ${r.seconds.toFixed(2)} s at ${r.rms_dbfs} dBFS.`);
    flash("");
  } catch (error) { $("#rec-status").textContent = "Not kept: " + error.message; flash("Not kept: " + error.message); }
}

async function undoTake() {
  try {
    const r = await api("/api/record/undo", { method: "POST", json: { folder: state.record.folder } });
    showRecord(r, `Removed ${r.removed.id}.`);
  } catch (error) { flash(error.message); }
}

// --- Correct -------------------------------------------------------------------------------------------------------
async function transcribeTake(blob) {
  $("#cor-status").textContent = "transcribing…";
  try {
    const r = await api("/api/transcribe?" + q({ model: $("#cor-model").value }), { method: "POST", body: blob, type: blob.type });
    state.correct = r;
    $("#cor-hyp").textContent = r.text || "(nothing)";
    $("#cor-text").value = r.text;
    $("#cor-save").disabled = false;
    $("#cor-status").textContent = `${r.seconds.toFixed(2)} s of audio decoded in ${r.decode_seconds} s.`;
  } catch (error) { $("#cor-status").textContent = ""; flash(error.message); }
}

async function saveCorrection() {
  const r = state.correct;
  const folder = $("#cor-folder").value;
  try {
    try { await api("/api/record/state?" + q({ folder })); }
    catch (e) { await api("/api/record/start", { method: "POST", json: { folder, domain: "general", count: 1, speaker: $("#cor-speaker").value } }); }
    const s = await api("/api/correct/save", { method: "POST", json: { folder, take_id: r.take_id, text: $("#cor-text").value, hyp: r.text, model: r.model, speaker: $("#cor-speaker").value } });
    $("#cor-status").textContent = `Saved ${s.kept.id} as a training row` + (s.kept.correction ? " (a correction: the model was wrong)." : " (the model was right).");
    $("#cor-save").disabled = true;
  } catch (error) { flash(error.message); }
}

// --- Try -----------------------------------------------------------------------------------------------------------
async function tryTake(blob) {
  const out = $("#try-out");
  out.textContent = "transcribing…";
  try {
    const r = await api("/api/try?" + q({ adapter: $("#try-adapter").value }), { method: "POST", body: blob, type: blob.type || "application/octet-stream" });
    const card = (title, t) => el("div", { class: "card" }, el("h4", {}, title), t ? el("p", { class: "hyp" }, t.text || "(nothing)") : el("p", {}, "no adapter chosen"),
      t ? el("p", { class: "meta" }, `decoded in ${t.decode_seconds} s (model load ${t.load_seconds} s)`) : "");
    out.replaceChildren(card("base", r.base), card("adapted: " + ($("#try-adapter").value || "-"), r.adapted));
  } catch (error) { out.textContent = ""; flash(error.message); }
}

// --- Train ---------------------------------------------------------------------------------------------------------
function parseFlags(text) {
  const tokens = text.trim().split(/\s+/).filter(Boolean), flags = {};
  for (let i = 0; i < tokens.length; i++) {
    if (!tokens[i].startsWith("--")) throw new Error(`More flags: ${tokens[i]} is not a --flag`);
    const name = tokens[i].slice(2).replace(/-/g, "_");
    if (i + 1 < tokens.length && !tokens[i + 1].startsWith("--")) { flags[name] = tokens[++i]; } else flags[name] = true;
  }
  return flags;
}

async function startTraining() {
  const kind = $("#train-kind").value;
  try {
    const form = { output_dir: $("#tr-output_dir").value, ...parseFlags($("#tr-extra").value) };
    if (kind === "experiment") {
      for (const name of ["dataset_path", "manifest_path", "model", "max_steps", "learning_rate", "eval_interval", "target_modules", "seed"]) form[name] = $("#tr-" + name).value;
    } else form.grid = $("#tr-grid").value;
    const job = await api("/api/train/start", { method: "POST", json: { kind, form } });
    $("#train-status").textContent = `Started ${job.id}: ${job.command}`;
    state.run = kind === "experiment" ? job.output : null;
    show("runs");
  } catch (error) { $("#train-status").textContent = ""; flash(error.message); }
}

async function loadJobs() {
  try {
    const data = await api("/api/jobs");
    $("#jobs tbody").replaceChildren(...data.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", {}, j.id), el("td", {}, el("code", {}, j.output)), el("td", {}, badge(j.state)), el("td", {}, el("code", {}, j.command)),
      el("td", {}, j.state === "running" ? el("button", { class: "stop", onclick: () => jobAction("stop", j.id) }, "Stop (Ctrl-C)")
        : el("button", { class: "resume", onclick: () => jobAction("resume", j.id) }, "Resume")))));
  } catch (error) { flash(error.message); }
}

async function jobAction(action, id) {
  try { await api("/api/train/" + action, { method: "POST", json: { job: id } }); await loadJobs(); }
  catch (error) { flash(error.message); }
}

// --- wiring --------------------------------------------------------------------------------------------------------
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
["#listen-folder", "#listen-set", "#listen-sort", "#listen-flag", "#listen-speaker", "#listen-changed", "#listen-min", "#listen-max"].forEach((s) => $(s).addEventListener("change", () => loadListen()));
$("#listen-q").addEventListener("input", () => loadListen());
$("#listen-more").addEventListener("click", () => loadListen(true));
$("#compare-go").addEventListener("click", compareRuns);
$("#rec-start").addEventListener("click", startRecording);
$("#rec-undo").addEventListener("click", undoTake);
toggler($("#rec-toggle"), $("#rec-live"), keepTake);
toggler($("#cor-toggle"), $("#cor-live"), transcribeTake);
toggler($("#try-toggle"), $("#try-live"), tryTake);
$("#try-file").addEventListener("change", (e) => { if (e.target.files[0]) tryTake(e.target.files[0]); });
$("#cor-save").addEventListener("click", saveCorrection);
$("#train-start").addEventListener("click", startTraining);
$("#train-kind").addEventListener("change", () => {
  const sweep = $("#train-kind").value === "sweep";
  document.querySelectorAll("#train-form .exp").forEach((n) => { n.hidden = sweep; });
  document.querySelectorAll("#train-form .sweep").forEach((n) => { n.hidden = !sweep; });
});
setInterval(() => { if (state.view === "train") loadJobs(); }, 3000);
show((location.hash || "#runs").slice(1) || "runs");
