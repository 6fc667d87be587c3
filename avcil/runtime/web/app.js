// The device's page: the JSON API under /api/ and the decisions as server-sent events (the token travels in the
// HttpOnly cookie set by ?token=).
"use strict";

const STAGES = ["audio_preprocess", "audio_encoder", "frame_preprocess", "visual_encoder", "head"];
const COLOURS = ["#8fb4e8", "#2f6fc4", "#f2b880", "#d9731a", "#5aa469"];
const SHOWN_DECISIONS = 40;  // rows kept in the feed
const CHARTED_DECISIONS = 60;  // bars in the latency chart
const SHOWN_EVENTS = 30;  // rows kept in the events table
let lastDecision = 0;
let lastEvent = 0;
const recent = [];
let learnPolling = null;
let shownJob = null;

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: `${response.status} ${response.statusText}`}; }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function alertLine(text) {
  $("alert").hidden = !text;
  $("alert").textContent = text || "";
}

async function refreshStatus() {
  try {
    const status = await api("/api/status");
    $("version").textContent = status.version;
    $("backend").textContent = `encoders on ${status.backend}`;
    $("classes").textContent = status.classes.join(", ");
    $("count").textContent = `(${status.decisions})`;
    alertLine(status.recognition_error);
    showMqtt(status.mqtt);
    showClipBounds(status.default_clips, status.max_clips);
    if (status.learning && status.learning.id && !learnPolling &&
        ["recording", "learning", "loading"].includes(status.learning.state)) pollLearning();
  } catch (error) {
    alertLine(`the device does not answer: ${error.message}`);
  }
}

let clipsDefaulted = false;

function showClipBounds(defaultClips, maxClips) {
  // The device says how many clips a class needs (`avcil bench enrol`), once: what the operator types is kept.
  const input = $("learn-clips");
  input.max = maxClips;
  if (!clipsDefaulted && !input.value) input.value = defaultClips;
  clipsDefaulted = true;
}

function showMqtt(mqtt) {
  $("mqtt").hidden = !mqtt;
  if (!mqtt) return;
  $("mqtt").dataset.state = mqtt.state;
  const said = {connected: `connected, events on ${mqtt.base}/event`, away: "broker away, events kept for it",
                closed: "closed (recognition ended)"};
  $("mqtt").textContent = `MQTT ${mqtt.broker}: ${said[mqtt.state]}`;
}

function clock(seconds) {
  // Events carry wall-clock start_time/end_time (Unix seconds) besides their start/end on the sources' clock.
  return seconds === undefined || seconds === null ? "" : new Date(seconds * 1000).toLocaleTimeString();
}

async function refreshEvents() {
  // Recognition events: /api/detections (/api/events is the decisions' stream).
  try {
    const data = await api(`/api/detections?after=${lastEvent}`);
    const ongoing = data.ongoing;
    $("ongoing").dataset.label = ongoing ? ongoing.label : "";
    $("ongoing").textContent = ongoing ? `under way: ${ongoing.label} since ${clock(ongoing.start_time)}`
      : "no event under way";
    $("event-count").textContent = `(${data.last})`;
    const body = $("detections").querySelector("tbody");
    for (const event of data.detections) {
      lastEvent = event.n;
      const row = document.createElement("tr");
      row.className = "detection";
      row.dataset.label = event.label;
      for (const text of [event.label, clock(event.start_time), clock(event.end_time), event.peak_score.toFixed(2),
                          event.windows]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const action = document.createElement("td");
      action.append(notButton(event.label, {event: event.n}));
      row.append(action);
      body.prepend(row);
    }
    while (body.children.length > SHOWN_EVENTS) body.lastChild.remove();
  } catch (error) {
    alertLine(`events: ${error.message}`);
  }
}

function followDecisions() {
  // Server-sent events: an EventSource reconnects by itself and resumes after the last decision it saw.
  const source = new EventSource(`/api/events?after=${lastDecision}`);
  source.addEventListener("decision", (event) => show(JSON.parse(event.data)));
}

function show(decision) {
  lastDecision = decision.n;
  $("label").textContent = decision.label;
  $("label").dataset.version = decision.model_version;
  $("score").textContent = decision.score.toFixed(2);
  // Each decision its own button: the one shown is for the decision shown, and only where it names a class.
  const correctable = decision.label === "unknown" ? [] : [notButton(decision.label, {decision: decision.n})];
  $("not-current").replaceChildren(...correctable);
  const top = decision.top_k.map((t) => `${t.label} ${t.score.toFixed(2)}`).join(", ");
  const row = document.createElement("li");
  row.value = decision.n;
  row.className = "decision";
  row.dataset.label = decision.label;
  const when = new Date(decision.time * 1000).toLocaleTimeString();
  row.textContent = `${when} ${decision.label} ${decision.score.toFixed(2)} [${top}] ` +
    `${Math.round(decision.latency_ms.total)} ms ${decision.model_version}`;
  $("decisions").prepend(row);
  while ($("decisions").children.length > SHOWN_DECISIONS) $("decisions").lastChild.remove();
  recent.push(decision.latency_ms);
  if (recent.length > CHARTED_DECISIONS) recent.shift();
  drawLatency();
}

function drawLatency() {
  const canvas = $("latency");
  const context = canvas.getContext("2d");
  const {width, height} = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(10, ...recent.map((l) => l.total || 0));
  const bar = width / CHARTED_DECISIONS;
  recent.forEach((latency, i) => {
    let y = height;
    STAGES.forEach((stage, s) => {
      const h = (latency[stage] || 0) / top * (height - 14);
      context.fillStyle = COLOURS[s];
      context.fillRect(i * bar, y - h, bar - 1, h);
      y -= h;
    });
    context.fillStyle = "#1d2330";  // the whole latency, from the window's end to the decision
    context.fillRect(i * bar, height - (latency.total || 0) / top * (height - 14) - 1, bar - 1, 2);
  });
  context.fillStyle = "#1d2330";
  context.font = "11px sans-serif";
  context.fillText(`${Math.round(top)} ms`, 2, 11);
}

function legend() {
  // Built as elements with their style set from script: the page's Content-Security-Policy refuses inline style
  // attributes in markup.
  const entry = (name, colour, height) => {
    const swatch = document.createElement("i");
    swatch.style.background = colour;
    if (height) swatch.style.height = height;
    const item = document.createElement("span");
    item.append(swatch, name);
    return item;
  };
  $("legend").replaceChildren(...STAGES.map((stage, s) => entry(stage, COLOURS[s])), entry("total", "#1d2330", "2px"));
}

function showJob(job) {
  const line = $("learn-state");
  line.dataset.state = job.state;
  line.textContent = job.message || "";
  shownJob = job;
  const busy = ["recording", "learning", "loading"].includes(job.state);
  $("learn-start").disabled = busy;
  $("background-start").disabled = busy;
}

async function pollLearning() {
  clearTimeout(learnPolling);
  try {
    const job = await api("/api/learn");
    showJob(job);
    if (["live", "failed"].includes(job.state)) {
      learnPolling = null;
      refreshVersions();
      refreshStatus();
      return;
    }
  } catch (error) {
    showJob({state: "failed", message: error.message});
  }
  learnPolling = setTimeout(pollLearning, 250);
}

async function startLearning(event) {
  event.preventDefault();
  const body = {label: $("learn-label").value, clips: Number($("learn-clips").value),
                countdown: Number($("learn-countdown").value), drop_suspect: $("learn-drop-suspect").checked};
  const clips = `${body.clips} clip${body.clips === 1 ? "" : "s"}`;
  showJob({state: "sending", message: `asking the device to record ${clips} of '${body.label}'`});
  try {
    showJob(await api("/api/learn", body));
    pollLearning();
  } catch (error) {
    showJob({state: "failed", message: error.message});
  }
}

async function startBackground(event) {
  event.preventDefault();
  const body = {minutes: Number($("background-minutes").value)};
  showJob({state: "sending", message: `asking the device to record ${body.minutes} minutes of background`});
  try {
    showJob(await api("/api/background", body));
    pollLearning();
  } catch (error) {
    showJob({state: "failed", message: error.message});
  }
}

function notButton(label, target) {
  // "That was not X", one click: the window of this decision, or the windows of this event, learnt as not X
  // (POST /api/not), a new version like any learning step.
  const button = document.createElement("button");
  button.className = "not";
  button.textContent = `not ${label}`;
  button.dataset.decision = target.decision || "";
  button.dataset.event = target.event || "";
  button.addEventListener("click", () => sayNot(button, label, target));
  return button;
}

async function sayNot(button, label, target) {
  button.disabled = true;
  const what = target.decision ? `decision ${target.decision}` : `event ${target.event}`;
  showJob({state: "learning", message: `learning that ${what} was not '${label}'`});
  try {
    showJob(await api("/api/not", target));
    button.remove();  // that decision or event is corrected
    refreshVersions();
    refreshStatus();
  } catch (error) {
    showJob({state: "failed", message: error.message});
    button.disabled = false;
  }
}

async function refreshVersions() {
  try {
    const data = await api("/api/versions");
    const body = $("versions").querySelector("tbody");
    body.replaceChildren();
    for (const row of data.versions.slice().reverse()) {
      const tr = document.createElement("tr");
      tr.className = row.current ? "current" : "";
      tr.dataset.version = row.version;
      const cells = [row.version + (row.current ? " (current)" : ""), row.created || "",
                     row.classes ? row.classes.join(", ") : "corrupt", row.note || ""];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const action = document.createElement("td");
      if (!row.current && row.ok) {
        const button = document.createElement("button");
        button.className = "rollback";
        button.textContent = "roll back to this";
        button.addEventListener("click", () => rollback(row.version));
        action.append(button);
      }
      tr.append(action);
      body.append(tr);
    }
  } catch (error) {
    alertLine(`versions: ${error.message}`);
  }
}

async function rollback(version) {
  if (!confirm(`Make ${version} the current version? The classes learnt after it stop being recognised ` +
               `(nothing is deleted: you can roll forward again).`)) return;
  try {
    await api("/api/rollback", {version});
    showJob({state: "idle", message: `rolled back to ${version}`});
  } catch (error) {
    alertLine(`rollback: ${error.message}`);
  }
  refreshVersions();
  refreshStatus();
}

legend();
$("learn-form").addEventListener("submit", startLearning);
$("background-form").addEventListener("submit", startBackground);
refreshStatus();
refreshVersions();
setInterval(refreshStatus, 1000);
refreshEvents();
setInterval(refreshEvents, 1000);
followDecisions();
