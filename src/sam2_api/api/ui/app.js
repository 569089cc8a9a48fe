// Click-to-segment. The canvas holds the image at its own pixel size and CSS scales it to fit the
// window, so points and boxes are kept in pixels of the upright image, the frame of POST /segment.
// render() draws one scene ({image, mask, points, labels, box}) onto any 2D context: the page
// draws the current prompt with it, and each candidate thumbnail its own.
//
// Where the browser can, local.js decodes clicks here instead (over the image's embedding, POST
// /embed) and the server is asked only on "Keep"; without it every click is a POST /segment.
//
// Clicks refine: each request sends every click so far and the `mask_id` of the mask shown, as
// `previous_mask_id`, so that SAM 2 starts from that mask (a 404, when the server no longer holds
// it, is answered by sending the clicks alone). Every answer is a step in `state.history`; undo
// goes back one step, to the mask shown before, without asking the server again.
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
  result: null,                       // the mask shown: an answer of /segment ({mask_url, score, mask_id, polygons,
                                      // ...}), or one of its candidates
  mask: null,                         // its mask: an <img>, white on black, the image's size
  history: [],                        // per answered prompt: {points, labels, box, choices: [{result, mask}], chosen}
  sent: 0,                            // number of the latest request; answers to older ones are dropped
  down: null, drag: null,             // a mouse press in progress, and the box it drags
  preview: null,                      // the hover preview's mask (decoded in this browser, local.js)
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

const maskLayerCache = new WeakMap();  // mask -> Map(outline width -> layers): the page and the thumbnails

// The mask as two layers to composite over the image: the fill, and over it an opaque outline
// `outline` image pixels wide along the inside of the mask's edge.
function maskLayers(mask, outline) {
  if (!maskLayerCache.has(mask)) maskLayerCache.set(mask, new Map());
  const cached = maskLayerCache.get(mask);
  if (cached.has(outline)) return cached.get(outline);
  const width = mask.naturalWidth || mask.width, height = mask.naturalHeight || mask.height;  // an <img> or a canvas
  const ring = paint(width, height, ["source-over", mask], ["difference", erode(mask, width, height, outline)]);
  const fill = tint(mask, width, height, LOOK.mask, LOOK.maskKeep), line = tint(ring, width, height, LOOK.mask, 0);
  const layers = [
    ["multiply", paint(width, height, ["source-over", fill.keep], ["multiply", line.keep])],
    ["lighter", paint(width, height, ["source-over", fill.add], ["multiply", line.keep], ["lighter", line.add])],
  ];
  cached.set(outline, layers);
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
  const { image, points, labels } = state, mask = state.preview || state.mask;
  render(ctx, { image, mask, points, labels, box: state.drag || state.box }, screenScale());
  $("keep").disabled = !state.result?.local;
  $("undo").disabled = state.history.length === 0;
  $("clear").disabled = points.length === 0 && !state.box;
}

// SAM 2's candidates of the last step, as thumbnails; a click on one makes it the mask shown (and
// the one the next click refines). The column keeps its room when empty, so the image never moves.
function drawCandidates() {
  const step = state.history[state.history.length - 1];
  const strip = $("candidates");
  strip.replaceChildren();
  strip.classList.toggle("empty", !(step && step.choices.length > 1));
  if (!step || step.choices.length < 2) return;
  step.choices.forEach(({ result, mask }, index) => {
    const button = document.createElement("button");
    button.className = index === step.chosen ? "chosen" : "";
    button.title = `candidate ${index + 1}: score ${result.score.toFixed(3)}`;
    const thumb = document.createElement("canvas");
    const scale = Math.min(THUMB_WIDTH / canvas.width, 1);
    Object.assign(thumb, { width: Math.round(canvas.width * scale), height: Math.round(canvas.height * scale) });
    const g = thumb.getContext("2d");
    g.scale(scale, scale);
    render(g, { image: state.image, mask, points: step.points, labels: step.labels, box: step.box }, scale);
    const caption = document.createElement("span");
    caption.textContent = result.score.toFixed(3);
    button.append(thumb, caption);
    button.addEventListener("click", () => choose(index));
    strip.append(button);
  });
}

const THUMB_WIDTH = 128;  // CSS pixels

function choose(index) {
  const step = state.history[state.history.length - 1];
  step.chosen = index;
  showResult(step.choices[index].result, step.choices[index].mask);
  drawCandidates();
}

// The whole image in the room left below the controls, never enlarged.
function fit() {
  if (!state.image) return;
  const room = $("view");
  const scale = Math.min(1, room.clientWidth / canvas.width, room.clientHeight / canvas.height);
  canvas.style.width = `${canvas.width * scale}px`;
  canvas.style.height = `${canvas.height * scale}px`;
}

// ---- Talking to the server -------------------------------------------------------------------

function setStatus(text) { $("status").textContent = text; }

function readyText() { return `${state.file.name}: ${canvas.width}×${canvas.height}. Click the object.`; }

let polygonsURL = null;  // the Blob behind the "polygons JSON" link

function showResult(result, mask) {
  Object.assign(state, { result, mask });
  $("result").hidden = !result;
  if (result) {
    $("score").textContent = result.score.toFixed(3);
    $("mask-part").hidden = !result.mask_url;
    if (result.mask_url) $("mask-link").href = result.mask_url;
    $("polygons-link").hidden = !result.polygons;  // a mask decoded in this browser has none until kept
    if (polygonsURL) URL.revokeObjectURL(polygonsURL);
    polygonsURL = URL.createObjectURL(new Blob([JSON.stringify(result.polygons)], { type: "application/json" }));
    $("polygons-link").href = polygonsURL;
  }
  draw();
}

// Whether a prompt is a lone click (one point, no box): SAM 2 then gives three candidate masks
// (/segment's default multimask output), and every form of it asks for all three.
function asksCandidates({ points, box }) {
  return points.length === 1 && !box;
}

// A prompt ({points, labels, box}: the current one by default, or a kept step of local.js's) as
// /segment's form; `previousMaskId`: the mask it refines. A lone click also asks for SAM 2's three
// candidates (it gets three masks anyway); every answer brings its polygons, for download.
function promptForm(previousMaskId, prompt = state) {
  const form = new FormData();
  form.append("image", state.file);
  if (prompt.points.length) {
    form.append("points", JSON.stringify(prompt.points));
    form.append("labels", JSON.stringify(prompt.labels));
  }
  if (prompt.box) form.append("box", JSON.stringify(prompt.box));
  if (previousMaskId) form.append("previous_mask_id", previousMaskId);
  if (asksCandidates(prompt)) form.append("candidates", "true");
  form.append("formats", JSON.stringify(["polygons"]));
  return form;
}

// Back to the prompt and the mask of the last step (none: an empty prompt, no mask).
function showLastStep() {
  const step = state.history[state.history.length - 1];
  Object.assign(state, step ? { points: [...step.points], labels: [...step.labels], box: step.box }
                            : { points: [], labels: [], box: null });
  if (step) showResult(step.choices[step.chosen].result, step.choices[step.chosen].mask);
  else showResult(null, null);
  drawCandidates();
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`the mask could not be loaded from ${url}`));
    image.src = url;
  });
}

async function loadMask(url) {
  if (!url) return null;
  const mask = await loadImage(url);
  if (mask.naturalWidth !== canvas.width || mask.naturalHeight !== canvas.height) {
    const sizes = `${mask.naturalWidth}×${mask.naturalHeight}, the image ${canvas.width}×${canvas.height}`;
    throw new Error(`the mask is ${sizes}`);
  }
  return mask;
}

// Sends the prompt shown, refining the mask shown; the answer becomes a new step. On an error the
// prompt goes back to the last step's, so that what is drawn is always what the server answered.
async function segment() {
  const sent = ++state.sent;
  if (!state.points.length && !state.box) { showResult(null, null); setStatus(readyText()); return; }
  if (decodesLocally()) { state.sent--; return segmentLocally(); }  // local.js: no request until Keep
  const headers = {};
  const key = sessionStorage.getItem("sam2-api-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  const previous = state.result?.mask_id;
  const post = (previousMaskId) => fetch("../segment", { method: "POST", body: promptForm(previousMaskId), headers });
  setStatus("Segmenting…");
  try {
    let response = await post(previous);
    if (response.status === 404 && previous) response = await post(null);  // that mask is gone: the clicks alone
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (sent !== state.sent) return;
    if (!response.ok) {
      showLastStep();
      if (response.status === 401) {
        $("key-label").hidden = false;
        $("api-key").focus();
        setStatus("This server needs an API key: enter it above, then click again.");
      } else {
        setStatus(`Error ${response.status}: ${body.error || JSON.stringify(body)}`);
      }
      return;
    }
    const answers = body.candidates || [body];
    const masks = await Promise.all(answers.map((answer) => loadMask(answer.mask_url)));
    if (sent !== state.sent) return;
    const { points, labels, box } = state;
    state.history.push({ points: [...points], labels: [...labels], box,
                         choices: answers.map((result, i) => ({ result, mask: masks[i] })), chosen: 0 });
    showResult(body, masks[0]);
    drawCandidates();
    const encoder = response.headers.get("X-Embedding-Cache") === "hit" ? "cached" : "encoded";
    setStatus(masks[0] ? `${body.width}×${body.height}, image ${encoder}.`
                       : "No mask_url: S3 is not configured on the server.");
  } catch (error) {
    if (sent !== state.sent) return;
    showLastStep();
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
  Object.assign(state, { file, image, points: [], labels: [], box: null, drag: null, down: null, history: [],
                         preview: null });
  canvas.width = image.width;
  canvas.height = image.height;
  $("stage").hidden = false;
  fit();
  showResult(null, null);
  drawCandidates();
  setStatus(readyText());
  try {
    await embedLocally(file);  // local.js: the embedding for clicks decoded here, when this browser can
  } catch (error) {
    setStatus(`${readyText()} (clicks go to the server: ${error.message})`);
  }
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

// One step back: the prompt and the mask shown before the last answer (no request).
function undo() {
  if (!state.history.length) return;
  state.sent++;  // an answer on its way belongs to the step undone
  state.history.pop();
  showLastStep();
  setStatus(state.history.length ? "Back to the previous mask." : readyText());
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => {
  Object.assign(state, { points: [], labels: [], box: null, history: [] });
  drawCandidates();
  segment();  // no prompt: drops any answer on its way, removes the mask, resets the status line
});
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT") return;
  if ((event.key === "z" && (event.ctrlKey || event.metaKey)) || event.key === "Backspace") {
    event.preventDefault();
    undo();
  }
});
