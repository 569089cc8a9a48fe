// Track objects in a clip. The browser decodes the clip's first frame into the canvas (upright, as
// players show it, which is also the server's frame of reference); clicks become objects, each
// with its points in pixels of that frame. "Track" submits the clip to the `track` task
// (POST /track/submit), follows GET /track/status until it ends, then plays the preview MP4 that
// the task stored (GET /track/get gives its URL and the manifest's).
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
// The preview's colours (video.PALETTE), object 0 first.
const PALETTE = ["#1e90ff", "#ff6347", "#32cd32", "#ffd700", "#ba55d3", "#00ced1", "#ff8c00", "#ff1493"];
const POLL_MS = 500;

const state = { file: null, frame: null, objects: [], task: null, phase: null };  // objects: [{points: [[x, y]], labels: [1]}]
// One wording for where a task is: the board's phase (progress.phase) when the status carries it, else the
// last phase shown; BentoML's own "in_progress" never replaces it.
const PHASES = { queued: "queued", decoding: "decoding the clip", tracking: "tracking", storing: "storing the masks",
                 canceling: "canceling" };

function setStatus(text) { $("status").textContent = text; }

function headers() {
  const key = sessionStorage.getItem("sam2-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function firstFrame(file) {
  const source = $("source");
  source.src = URL.createObjectURL(file);
  await new Promise((resolve, reject) => {
    source.onloadeddata = resolve;
    source.onerror = () => reject(new Error("this browser cannot play the clip; the server may still track it"));
  });
  source.currentTime = 0;
  await new Promise((resolve) => { source.onseeked = resolve; if (source.readyState >= 2) resolve(); });
  return createImageBitmap(source);
}

function fit() {
  const stage = $("stage").getBoundingClientRect();
  const scale = Math.min(1, stage.width / canvas.width, stage.height / canvas.height);
  // The preview has the clip's size too: both are shown at it, or smaller to fit, never stretched.
  for (const shown of [canvas, $("preview")]) {
    shown.style.width = `${canvas.width * scale}px`;
    shown.style.height = `${canvas.height * scale}px`;
  }
}

function draw() {
  if (!state.frame) return;
  ctx.drawImage(state.frame, 0, 0);
  const scale = canvas.width / canvas.getBoundingClientRect().width || 1;
  state.objects.forEach((object, index) => {
    object.points.forEach(([x, y], n) => {
      ctx.beginPath();
      ctx.arc(x, y, 6 * scale, 0, 2 * Math.PI);
      ctx.fillStyle = object.labels[n] ? PALETTE[index % PALETTE.length] : "#000";
      ctx.fill();
      ctx.lineWidth = 2 * scale;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    });
  });
  $("undo").disabled = $("track").disabled = !state.objects.length || state.task !== null;
}

function pointAt(event) {
  const box = canvas.getBoundingClientRect();
  return [Math.round(((event.clientX - box.left) * canvas.width) / box.width),
          Math.round(((event.clientY - box.top) * canvas.height) / box.height)];
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (state.task !== null) return;
  const point = pointAt(event), last = state.objects[state.objects.length - 1];
  const background = event.button === 2;
  if ((event.shiftKey || background) && last) {
    last.points.push(point);
    last.labels.push(background ? 0 : 1);
  } else if (!background) {
    state.objects.push({ points: [point], labels: [1] });
  }
  setStatus(`${state.objects.length} object(s) on the first frame. Track when ready.`);
  draw();
});

$("undo").addEventListener("click", () => {
  const last = state.objects[state.objects.length - 1];
  last.points.pop();
  last.labels.pop();
  if (!last.points.length) state.objects.pop();
  draw();
});

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  Object.assign(state, { file, objects: [], task: null });
  $("preview").hidden = true;
  $("links").hidden = true;
  canvas.hidden = false;
  try {
    state.frame = await firstFrame(file);
  } catch (error) {
    setStatus(String(error.message || error));
    return;
  }
  canvas.width = state.frame.width;
  canvas.height = state.frame.height;
  $("stage").hidden = false;
  fit();
  draw();
  setStatus(`${canvas.width}×${canvas.height}. Click the objects to track on this first frame.`);
});

$("api-key").addEventListener("change", () => sessionStorage.setItem("sam2-api-key", $("api-key").value));
window.addEventListener("resize", () => { fit(); draw(); });

$("track").addEventListener("click", async () => {
  const form = new FormData();
  form.append("video", state.file);
  form.append("objects", JSON.stringify(state.objects.map((o) => ({ frame_index: 0, ...o }))));
  const response = await fetch("../track/submit", { method: "POST", body: form, headers: headers() });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) {
    $("key-label").hidden = false;
    $("api-key").focus();
    setStatus("This server needs an API key: enter it above, then Track again.");
    return;
  }
  if (!response.ok) { setStatus(`Error ${response.status}: ${body.error || JSON.stringify(body)}`); return; }
  state.task = body.task_id;
  state.phase = "queued";
  $("cancel").hidden = false;
  $("progress").hidden = false;
  $("progress").removeAttribute("value");
  draw();
  follow(body.task_id);
});

$("cancel").addEventListener("click", () => {
  if (state.task) fetch(`../track/cancel?task_id=${state.task}`, { method: "PUT", headers: headers() });
});

async function follow(taskId) {
  while (state.task === taskId) {
    const status = await (await fetch(`../track/status?task_id=${taskId}`, { headers: headers() })).json();
    const progress = status.progress || {};
    if (progress.frames_total) {
      $("progress").max = progress.frames_total;
      $("progress").value = progress.frames_done || 0;
    }
    const counts = progress.frames_total ? ` ${progress.frames_done || 0}/${progress.frames_total} frames` : "";
    const queue = progress.queue_position ? ` (${progress.queue_position} ahead)` : "";
    if (PHASES[progress.phase]) state.phase = progress.phase;
    setStatus(`${PHASES[state.phase]}${counts}${queue}…`);
    if (["completed", "failed", "canceled"].includes(status.status)) return finish(taskId, status.status);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function finish(taskId, outcome) {
  state.task = null;
  $("cancel").hidden = true;
  $("progress").hidden = true;
  draw();
  const response = await fetch(`../track/get?task_id=${taskId}`, { headers: headers() });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (outcome !== "completed" || !response.ok) { setStatus(`${outcome}: ${body.error || JSON.stringify(body)}`); return; }
  setStatus(`Tracked ${body.objects} object(s) through ${body.frames} frames (${body.width}×${body.height}).`);
  $("manifest-link").href = body.manifest_url;
  $("links").hidden = false;
  if (body.preview_url) {
    const preview = $("preview");
    preview.src = body.preview_url;
    preview.hidden = false;
    canvas.hidden = true;
    preview.play().catch(() => {});
  }
}
