// Click-to-segment. The canvas holds the image at its own pixel size and CSS scales it to fit the
// window, so points and boxes are kept in pixels of the upright image, the frame of POST /segment.
// render() draws one scene ({image, mask, points, labels, box}) onto any 2D context: the page
// draws the current prompt with it; other views (candidate thumbnails, chained clicks) can draw
// scenes of their own.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");

const LOOK = {
  object: "#22c55e", background: "#ef4444", ring: "#ffffff", box: "#facc15",
  mask: [30, 144, 255],  // the fill and the outline
  maskKeep: 128,         // the fill keeps 128/255 of the image under it
  // In screen (CSS) pixels, whatever the image's scale:
  marker: 6, ringWidth: 2, boxWidth: 2, outline: 2, dragThreshold: 6,
};

const state = {
  file: null, image: null,            // the chosen file, and its upright image (an ImageBitmap)
  points: [], labels: [], box: null,  // the prompt, in pixels of the upright image
  result: null,                       // the latest answer of /segment: {mask_url, score, width, height}
  mask: null,                         // its mask: an <img>, white on black, the image's size
  sent: 0,                            // number of the latest request; answers to older ones are dropped
  down: null, drag: null,             // a mouse press in progress, and the box it drags
};

// ---- Drawing -------------------------------------------------------------------------------------
// The mask comes from another origin (the S3 bucket) that need not send CORS headers, so every
// canvas it touches is "tainted": its pixels cannot be read back. Everything below is therefore
// built from compositing operations only, never from getImageData.

function paint(width, height, ...steps) {  // a new layer; steps: [operation, source | fill colour, dx, dy]
  const layer = document.createElement("canvas");
  Object.assign(layer, { width, height });
  const g = layer.getContext("2d");
  for (const [operation, what, dx = 0, dy = 0] of steps) {
    g.globalCompositeOperation = operation;
    if (typeof what === "string") { g.fillStyle = what; g.fillRect(0, 0, width, height); }
    else g.drawImage(what, dx, dy);
  }
  return layer;
}

// White where the square of side 2·radius+1 around a pixel lies inside the white shape; the
// image's edge counts as inside, so a mask that touches it gets no outline there.
function erode(shape, width, height, radius) {
  const shifts = Array.from({ length: radius }, (_, i) => [i + 1, -i - 1]).flat();
  const across = paint(width, height, ["source-over", shape], ...shifts.map((d) => ["darken", shape, d, 0]));
  return paint(width, height, ["source-over", across], ...shifts.map((d) => ["darken", across, 0, d]));
}

// What the mask's colour does to the pixels of a white shape: multiplied by `keep`, then `add`
// added, a pixel p becomes p·k/255 + colour·(1 − k/255) inside the shape and stays p outside.
function tint(shape, width, height, rgb, k) {
  const added = `rgb(${rgb.map((c) => Math.round((c * (255 - k)) / 255)).join(",")})`;
  return {
    keep: paint(width, height, ["source-over", "#fff"], ["difference", shape], ["lighten", `rgb(${k},${k},${k})`]),
    add: paint(width, height, ["source-over", shape], ["multiply", added]),
  };
}

const maskLayerCache = new WeakMap();

// The mask as two layers to composite over the image: the fill, and over it an opaque outline
// `outline` image pixels wide along the inside of the mask's edge.
function maskLayers(mask, outline) {
  const cached = maskLayerCache.get(mask);
  if (cached?.outline === outline) return cached.layers;
  const { naturalWidth: width, naturalHeight: height } = mask;
  const ring = paint(width, height, ["source-over", mask], ["difference", erode(mask, width, height, outline)]);
  const fill = tint(mask, width, height, LOOK.mask, LOOK.maskKeep), line = tint(ring, width, height, LOOK.mask, 0);
  const layers = [
    ["multiply", paint(width, height, ["source-over", fill.keep], ["multiply", line.keep])],
    ["lighter", paint(width, height, ["source-over", fill.add], ["multiply", line.keep], ["lighter", line.add])],
  ];
  maskLayerCache.set(mask, { outline, layers });
  return layers;
}

// Draws scene = {image, mask, points, labels, box} onto g in the image's pixel frame: the image,
// the mask (tinted fill, opaque outline), then the box and the points on top of it. `scale`:
// screen pixels per image pixel, so that markers and lines keep their size on screen.
function render(g, { image, mask = null, points = [], labels = [], box = null }, scale = 1) {
  const px = 1 / scale;
  g.save();
  g.globalCompositeOperation = "source-over";
  g.drawImage(image, 0, 0);
  if (mask) {
    for (const [operation, layer] of maskLayers(mask, Math.max(1, Math.round(LOOK.outline * px)))) {
      g.globalCompositeOperation = operation;
      g.drawImage(layer, 0, 0);
    }
    g.globalCompositeOperation = "source-over";
  }
  if (box) {
    g.lineWidth = LOOK.boxWidth * px;
    g.strokeStyle = LOOK.box;
    g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  points.forEach(([x, y], i) => {
    g.beginPath();
    g.arc(x, y, LOOK.marker * px, 0, 2 * Math.PI);
    g.fillStyle = labels[i] ? LOOK.object : LOOK.background;
    g.fill();
    g.lineWidth = LOOK.ringWidth * px;
    g.strokeStyle = LOOK.ring;
    g.stroke();
  });
  g.restore();
}

function screenScale() { return canvas.getBoundingClientRect().width / canvas.width; }

function draw() {
  if (!state.image) return;
  const { image, mask, points, labels } = state;
  render(ctx, { image, mask, points, labels, box: state.drag || state.box }, screenScale());
  $("undo").disabled = points.length === 0;
  $("clear").disabled = points.length === 0 && !state.box;
}

// The whole image in the room left below the controls, never enlarged.
function fit() {
  if (!state.image) return;
  const room = $("stage");
  const scale = Math.min(1, room.clientWidth / canvas.width, room.clientHeight / canvas.height);
  canvas.style.width = `${canvas.width * scale}px`;
  canvas.style.height = `${canvas.height * scale}px`;
}

// ---- Talking to the server -------------------------------------------------------------------

function setStatus(text) { $("status").textContent = text; }

function readyText() { return `${state.file.name}: ${canvas.width}×${canvas.height}. Click the object.`; }

function showResult(result, mask) {
  Object.assign(state, { result, mask });
  $("result").hidden = !result;
  if (result) {
    $("score").textContent = result.score.toFixed(3);
    $("mask-part").hidden = !result.mask_url;
    if (result.mask_url) $("mask-link").href = result.mask_url;
  }
  draw();
}

function promptForm() {
  const form = new FormData();
  form.append("image", state.file);
  if (state.points.length) {
    form.append("points", JSON.stringify(state.points));
    form.append("labels", JSON.stringify(state.labels));
  }
  if (state.box) form.append("box", JSON.stringify(state.box));
  return form;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`the mask could not be loaded from ${url}`));
    image.src = url;
  });
}

async function segment() {
  const sent = ++state.sent;
  if (!state.points.length && !state.box) { showResult(null, null); setStatus(readyText()); return; }
  const headers = {};
  const key = sessionStorage.getItem("sam2-api-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  setStatus("Segmenting…");
  try {
    const response = await fetch("../segment", { method: "POST", body: promptForm(), headers });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (sent !== state.sent) return;
    if (response.status === 401) {
      showResult(null, null);
      $("key-label").hidden = false;
      $("api-key").focus();
      setStatus("This server needs an API key: enter it above, then click again.");
      return;
    }
    if (!response.ok) {
      showResult(null, null);
      setStatus(`Error ${response.status}: ${body.error || JSON.stringify(body)}`);
      return;
    }
    const mask = body.mask_url ? await loadImage(body.mask_url) : null;
    if (sent !== state.sent) return;
    if (mask && (mask.naturalWidth !== canvas.width || mask.naturalHeight !== canvas.height)) {
      const sizes = `${mask.naturalWidth}×${mask.naturalHeight}, the image ${canvas.width}×${canvas.height}`;
      throw new Error(`the mask is ${sizes}`);
    }
    showResult(body, mask);
    const encoder = response.headers.get("X-Embedding-Cache") === "hit" ? "cached" : "encoded";
    setStatus(mask ? `${body.width}×${body.height}, image ${encoder}.`
                   : "No mask_url: S3 is not configured on the server.");
  } catch (error) {
    if (sent !== state.sent) return;
    showResult(null, null);
    setStatus(`Request failed: ${error.message}`);
  }
}

// ---- Input ---------------------------------------------------------------------------------------

function imageXY(event) {  // the pointer in pixels of the image, whatever its size on screen
  const rect = canvas.getBoundingClientRect();
  const x = Math.round(((event.clientX - rect.left) * canvas.width) / rect.width);
  const y = Math.round(((event.clientY - rect.top) * canvas.height) / rect.height);
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  state.sent++;  // an answer for the previous image is no longer wanted
  let image;
  try {
    image = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    setStatus(`${file.name}: this browser cannot show it as an image.`);
    return;
  }
  Object.assign(state, { file, image, points: [], labels: [], box: null, drag: null, down: null });
  canvas.width = image.width;
  canvas.height = image.height;
  $("stage").hidden = false;
  fit();
  showResult(null, null);
  setStatus(readyText());
});

window.addEventListener("resize", () => { fit(); draw(); });
$("api-key").addEventListener("change", () => sessionStorage.setItem("sam2-api-key", $("api-key").value));
canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (event.button === 1) return;
  state.drag = null;
  state.down = { at: imageXY(event), clientX: event.clientX, clientY: event.clientY,
                 background: event.button === 2 || event.shiftKey };
});
canvas.addEventListener("mousemove", (event) => {
  if (!state.down) return;
  const moved = Math.abs(event.clientX - state.down.clientX) + Math.abs(event.clientY - state.down.clientY);
  if (moved > LOOK.dragThreshold) {
    const [x, y] = imageXY(event), [x0, y0] = state.down.at;
    state.drag = [Math.min(x, x0), Math.min(y, y0), Math.max(x, x0), Math.max(y, y0)];
    draw();
  }
});
canvas.addEventListener("mouseup", () => {
  if (!state.down) return;
  if (state.drag) {
    state.box = state.drag;
  } else {
    state.points.push(state.down.at);
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
$("clear").addEventListener("click", () => {
  Object.assign(state, { points: [], labels: [], box: null });
  segment();  // no prompt: drops any answer on its way, removes the mask, resets the status line
});
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT") return;
  if ((event.key === "z" && (event.ctrlKey || event.metaKey)) || event.key === "Backspace") {
    event.preventDefault();
    undo();
  }
});
