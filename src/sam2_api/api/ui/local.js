// Clicks decoded in this browser (app.js calls in here): the server encodes the image once
// (POST /embed), then every click and the hover preview run SAM 2's prompt encoder + mask decoder
// in a Web Worker (decoder-worker.js, onnxruntime-web over GET /decoder.onnx); a refining click
// feeds the previous mask's low-res logits back, as /segment does with previous_mask_id. Nothing
// goes to the server until "Keep": ONE /segment request, the last step's prompt with the earlier
// ones as `steps` (the server runs them in turn, each refining the candidate chosen here, as the
// page did), which stores the mask as before (PNG on S3, mask_url). Without WebAssembly or Web Workers, with
// ?decode=server in the address, or when the decoder cannot be loaded, clicks go to /segment.
"use strict";

const local = {
  worker: null, ready: false, image: null,  // image: the File whose embedding the worker holds
  ids: 0, waiting: new Map(),               // request id -> resolve
  hovering: null, hoverBusy: false,         // the latest hover point, and whether a preview is running
  lastMs: null,
};

function authHeaders() {
  const key = sessionStorage.getItem("sam2-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function localWanted() {
  return typeof WebAssembly === "object" && typeof Worker === "function"
    && new URLSearchParams(location.search).get("decode") !== "server";
}

function ask(message, transfer = []) {
  const id = ++local.ids;
  return new Promise((resolve, reject) => {
    local.waiting.set(id, { resolve, reject });
    local.worker.postMessage({ ...message, id }, transfer);
  });
}

function startLocal() {
  if (!localWanted()) { $("mode").textContent = "clicks decoded on the server"; return; }
  local.worker = new Worker("decoder-worker.js");
  local.worker.onmessage = ({ data }) => {
    if (data.type === "ready") {
      Object.assign(local, { ready: true, threads: data.threads });
      $("mode").textContent = "clicks decoded in this browser";
      return;
    }
    const waiter = local.waiting.get(data.id);
    if (data.type === "error" && !waiter) {  // the decoder did not load: server clicks
      $("mode").textContent = `clicks decoded on the server (${data.message})`;
      if (data.status === 401) $("key-label").hidden = false;
      local.worker.terminate();
      local.worker = null;
      return;
    }
    local.waiting.delete(data.id);
    if (waiter) (data.type === "error" ? waiter.reject(new Error(data.message)) : waiter.resolve(data));
  };
  const threads = Number(new URLSearchParams(location.search).get("threads")) || null;  // for measuring
  local.worker.postMessage({ type: "init", headers: authHeaders(), threads });
}

// The chosen image's embedding into the worker; false when the page should click on the server.
async function embedLocally(file) {
  local.image = null;
  if (!local.ready) return false;
  const form = new FormData();
  form.append("image", file);
  setStatus("Encoding the image on the server…");
  const response = await fetch("../embed", { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (response.status === 401) {
      $("key-label").hidden = false;
      $("api-key").focus();
      setStatus("This server needs an API key: enter it above, then choose the image again.");
    } else {
      setStatus(`Error ${response.status}: ${body.error}`);
    }
    return true;
  }
  const buffer = await response.arrayBuffer();
  if (state.file !== file) return true;  // another image was chosen meanwhile
  await ask({ type: "embedding", buffer }, [buffer]);
  local.image = file;
  setStatus(`${readyText()} (${(buffer.byteLength / 1e6).toFixed(1)} MB embedding; clicks decoded here)`);
  return true;
}

function decodesLocally() { return local.ready && local.image === state.file && state.file !== null; }

// The prompt as the decoder takes it: the box's corners first (labels 2, 3), then the clicks.
function decoderPrompt(points, labels, box) {
  const coords = [...(box ? [[box[0], box[1]], [box[2], box[3]]] : []), ...points];
  return { coords, labels: [...(box ? [2, 3] : []), ...labels], multimask: asksCandidates({ points, box }) };
}

function maskCanvas(rgba) {
  const layer = document.createElement("canvas");
  Object.assign(layer, { width: canvas.width, height: canvas.height });
  layer.getContext("2d").putImageData(new ImageData(rgba, canvas.width, canvas.height), 0, 0);
  return layer;
}

async function decodeHere(points, labels, box, lowRes) {
  const started = performance.now();
  const answer = await ask({ type: "decode", ...decoderPrompt(points, labels, box), lowRes });
  const choices = answer.choices.map(({ rgba, score, lowRes: low }) => ({
    result: { score, lowRes: low, local: true }, mask: maskCanvas(rgba) }));
  return { choices, ms: answer.ms, total: performance.now() - started };
}

// A click (the prompt shown, refining the mask shown) decoded here; a new step, as segment()'s.
async function segmentLocally() {
  const sent = ++state.sent;
  const { points, labels, box } = state;
  const lowRes = state.result?.lowRes || null;
  try {
    const { choices, ms, total } = await decodeHere(points, labels, box, lowRes);
    if (sent !== state.sent) return;
    state.preview = null;
    state.history.push({ points: [...points], labels: [...labels], box, choices, chosen: 0 });
    showResult(choices[0].result, choices[0].mask);
    drawCandidates();
    local.lastMs = ms;
    $("decode-ms").textContent = ms.toFixed(1);
    setStatus(`Decoded in this browser in ${ms.toFixed(0)} ms (${total.toFixed(0)} ms with drawing). ` +
              "Keep stores the mask.");
  } catch (error) {
    if (sent !== state.sent) return;
    showLastStep();
    setStatus(`Decoding failed: ${error.message}`);
  }
}

// Hover: the mask a click here would give, drawn until the pointer moves on (latest point only).
async function hover(at) {
  local.hovering = at;
  if (local.hoverBusy || !decodesLocally()) return;
  local.hoverBusy = true;
  try {
    while (local.hovering) {
      const point = local.hovering;
      const sent = state.sent;
      const { choices } = await decodeHere([...state.points, point], [...state.labels, 1], state.box,
                                           state.result?.lowRes || null);
      if (sent !== state.sent || local.hovering !== point) continue;
      state.preview = choices[0].mask;
      draw();
      local.hovering = null;
    }
  } finally {
    local.hoverBusy = false;
  }
}

function endHover() {
  local.hovering = null;
  if (state.preview) { state.preview = null; draw(); }
}

// An earlier step as /segment's `steps` take it: its prompt as promptForm sends it, and the
// candidate chosen here, which the next step refines.
function earlierStep({ points, labels, box, chosen }) {
  const candidates = asksCandidates({ points, box });
  return { ...(points.length ? { points, labels } : {}), ...(box ? { box } : {}),
           ...(candidates ? { candidates } : {}), chosen };
}

// Keep: one /segment request for the kept chain, so that the stored mask is the server's own for
// it (the request's prompt refining the steps before, each with the same candidate chosen).
async function keep() {
  const steps = [...state.history];
  if (!steps.length || !state.result?.local) return;
  const sent = ++state.sent;
  setStatus("Storing the mask…");
  const last = steps.pop();
  const form = promptForm(null, last);  // app.js: the form a server click sends
  if (steps.length) form.append("steps", JSON.stringify(steps.map(earlierStep)));
  try {
    const response = await fetch("../segment", { method: "POST", body: form, headers: authHeaders() });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(`${response.status}: ${body.error}`);
    const answer = body.candidates ? body.candidates[last.chosen] : body;
    const mask = await loadMask(answer.mask_url);
    if (sent !== state.sent) return;
    const step = state.history[state.history.length - 1], kept = step.choices[step.chosen];
    const result = { ...answer, lowRes: kept.result.lowRes };  // the next click here refines it
    step.choices[step.chosen] = { result, mask: mask || kept.mask };
    showResult(result, mask || kept.mask);
    setStatus(answer.mask_url ? "Kept: the mask is stored (mask PNG)." : "Kept, but not stored: S3 is not configured.");
  } catch (error) {
    if (sent === state.sent) setStatus(`Keeping failed: ${error.message}`);
  }
}

startLocal();
// A key entered after the decoder was refused (401): load it again with the key
$("api-key").addEventListener("change", () => { if (!local.worker && localWanted()) startLocal(); });
$("keep").addEventListener("click", keep);
canvas.addEventListener("mousemove", (event) => { if (!state.down) hover(imageXY(event)); });
canvas.addEventListener("mouseleave", endHover);
