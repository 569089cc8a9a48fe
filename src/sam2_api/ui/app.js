// Click-to-segment: draws the image, collects points (left = object, right/shift = background) or
// a dragged box in pixels of the upright image, calls POST /segment, shows the mask from mask_url.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d"), maskImg = $("mask");
const state = { file: null, bitmap: null, points: [], labels: [], box: null, drag: null, busy: false };

function imageXY(event) {
  const rect = canvas.getBoundingClientRect();
  return [
    Math.round(((event.clientX - rect.left) * canvas.width) / rect.width),
    Math.round(((event.clientY - rect.top) * canvas.height) / rect.height),
  ];
}

function draw() {
  if (!state.bitmap) return;
  ctx.drawImage(state.bitmap, 0, 0);
  const r = Math.max(4, Math.round(canvas.width / 150));
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] ? "#22c55e" : "#ef4444";
    ctx.fill();
    ctx.lineWidth = Math.max(1, r / 3);
    ctx.strokeStyle = "white";
    ctx.stroke();
  });
  const box = state.drag || state.box;
  if (box) {
    ctx.lineWidth = Math.max(2, r / 2);
    ctx.strokeStyle = "#3b82f6";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  $("undo").disabled = state.points.length === 0;
  $("clear").disabled = state.points.length === 0 && !state.box;
}

function setStatus(text) { $("status").textContent = text; }

async function segment() {
  if (!state.file || (!state.points.length && !state.box)) { maskImg.hidden = true; return; }
  const form = new FormData();
  form.append("image", state.file);
  if (state.points.length) {
    form.append("points", JSON.stringify(state.points));
    form.append("labels", JSON.stringify(state.labels));
  }
  if (state.box) form.append("box", JSON.stringify(state.box));
  const headers = {};
  const key = sessionStorage.getItem("sam2-api-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  setStatus("Segmenting…");
  state.busy = true;
  try {
    const response = await fetch("../segment", { method: "POST", body: form, headers });
    const body = await response.json();
    if (response.status === 401) {
      $("key-label").hidden = false;
      $("api-key").focus();
      setStatus("This server needs an API key: enter it above, then click again.");
      return;
    }
    if (!response.ok) { setStatus(`Error ${response.status}: ${body.error || JSON.stringify(body)}`); return; }
    if (!body.mask_url) { maskImg.hidden = true; setStatus(`score ${body.score.toFixed(3)} — no mask_url (S3 not configured)`); return; }
    maskImg.onload = () => {
      maskImg.hidden = false;
      setStatus(`score ${body.score.toFixed(3)} — ${body.width}×${body.height} — ${response.headers.get("X-Embedding-Cache") === "hit" ? "cached" : "encoded"}`);
    };
    maskImg.onerror = () => setStatus("The mask could not be loaded from " + body.mask_url);
    maskImg.src = body.mask_url;
  } catch (error) {
    setStatus(`Request failed: ${error}`);
  } finally {
    state.busy = false;
  }
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  state.file = file;
  state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  canvas.width = state.bitmap.width;
  canvas.height = state.bitmap.height;
  Object.assign(state, { points: [], labels: [], box: null, drag: null });
  maskImg.hidden = true;
  $("stage").hidden = false;
  draw();
  setStatus(`${file.name}: ${canvas.width}×${canvas.height}. Click the object.`);
});

$("api-key").addEventListener("change", () => sessionStorage.setItem("sam2-api-key", $("api-key").value));
canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  const [x, y] = imageXY(event);
  state.drag = null;
  state.down = { x, y, background: event.button === 2 || event.shiftKey };
});
canvas.addEventListener("mousemove", (event) => {
  if (!state.down) return;
  const [x, y] = imageXY(event);
  if (Math.abs(x - state.down.x) + Math.abs(y - state.down.y) > 8) {
    state.drag = [Math.min(x, state.down.x), Math.min(y, state.down.y), Math.max(x, state.down.x), Math.max(y, state.down.y)];
    draw();
  }
});
canvas.addEventListener("mouseup", (event) => {
  if (!state.down) return;
  if (state.drag) {
    state.box = state.drag;
  } else {
    state.points.push([state.down.x, state.down.y]);
    state.labels.push(state.down.background ? 0 : 1);
  }
  state.down = null;
  state.drag = null;
  draw();
  segment();
});

function undo() {
  if (!state.points.length) return;
  state.points.pop();
  state.labels.pop();
  draw();
  segment();
}
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { Object.assign(state, { points: [], labels: [], box: null }); draw(); segment(); });
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT") return;
  if ((event.key === "z" && (event.ctrlKey || event.metaKey)) || event.key === "Backspace") {
    event.preventDefault();
    undo();
  }
});
