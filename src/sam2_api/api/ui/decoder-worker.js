// A Web Worker that decodes clicks in the browser: SAM 2's prompt encoder + mask decoder
// (GET /decoder.onnx) run by onnxruntime-web (vendored under vendor/, no CDN) over one image's
// embedding (POST /embed, an .npz). Messages in, each answered by one message out:
//   {type: "init", headers}                    -> {type: "ready"} | {type: "error", status, message}
//   {type: "embedding", id, buffer}            -> {type: "embedded", id, width, height}
//   {type: "decode", id, coords, labels, lowRes, multimask}
//        -> {type: "decoded", id, ms, choices: [{rgba, score, lowRes}]}: the mask /segment would
//           answer first (a lone click: SAM 2's three candidates, best first), as white-on-black RGBA.
// Jobs run one at a time, in the order they came (a session runs one call at a time).
"use strict";

importScripts("vendor/ort.wasm.min.js");
ort.env.wasm.wasmPaths = new URL("vendor/", self.location.href).href;
// Threads need a cross-origin isolated page (/ui is: COOP + COEP credentialless): there onnxruntime-web
// picks its own default (half the cores, at most 4); one thread elsewhere. Init's `threads`
// (/ui/?threads=N) sets it, for measuring.
if (!self.crossOriginIsolated) ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;

let session = null;
let image = null;  // {feeds: {image_embeddings, image_features_0, image_features_1, original_image_size}, width, height}
let queue = Promise.resolve();

self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data)).catch((error) =>
    self.postMessage({ type: "error", id: event.data.id, message: String(error && error.message || error) }));
};

async function handle(message) {
  if (message.type === "init") {
    if (message.threads) ort.env.wasm.numThreads = self.crossOriginIsolated ? message.threads : 1;
    const response = await fetch("../decoder.onnx", { headers: message.headers || {} });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      self.postMessage({ type: "error", status: response.status, message: body.error || response.statusText });
      return;
    }
    session = await ort.InferenceSession.create(new Uint8Array(await response.arrayBuffer()),
                                                { executionProviders: ["wasm"] });
    self.postMessage({ type: "ready", threads: ort.env.wasm.numThreads });
  } else if (message.type === "embedding") {
    const arrays = readNpz(message.buffer);
    const feeds = {};
    for (const name of ["image_embeddings", "image_features_0", "image_features_1"]) {
      feeds[name] = new ort.Tensor("float32", arrays[name].data, arrays[name].shape);
    }
    const size = arrays.original_image_size;
    feeds.original_image_size = new ort.Tensor("int32", size.data, size.shape);
    image = { feeds, height: size.data[0], width: size.data[1] };
    self.postMessage({ type: "embedded", id: message.id, width: image.width, height: image.height });
  } else if (message.type === "decode") {
    const started = performance.now();
    const count = message.labels.length;
    const lowRes = message.lowRes;
    const feeds = {
      ...image.feeds,
      point_coords: new ort.Tensor("float32", Float32Array.from(message.coords.flat()), [1, count, 2]),
      point_labels: new ort.Tensor("int32", Int32Array.from(message.labels), [1, count]),
      input_masks: new ort.Tensor("float32", lowRes || new Float32Array(256 * 256), [1, 1, 256, 256]),
      has_input_masks: new ort.Tensor("float32", Float32Array.of(lowRes ? 1 : 0), [1]),
    };
    const out = await session.run(feeds);
    const ms = performance.now() - started;
    const scores = out.iou_predictions.data, masks = out.masks.data, low = out.low_res_masks.data;
    const pixels = image.width * image.height;
    // /segment's choice: a lone click takes SAM 2's three candidates (best first), else the first mask
    const order = message.multimask ? [1, 2, 3].sort((a, b) => scores[b] - scores[a]) : [0];
    const choices = order.map((index) => {
      const rgba = new Uint8ClampedArray(pixels * 4);
      const from = index * pixels;
      for (let p = 0; p < pixels; p++) {
        const on = masks[from + p] > 0 ? 255 : 0;
        rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = on;
        rgba[4 * p + 3] = 255;
      }
      return { rgba, score: scores[index], lowRes: low.slice(index * 65536, (index + 1) * 65536) };
    });
    self.postMessage({ type: "decoded", id: message.id, ms, choices },
                     choices.flatMap((c) => [c.rgba.buffer, c.lowRes.buffer]));
  }
}

// ---- .npz (NumPy's zip of .npy files, stored uncompressed by POST /embed) ----------------------

function readNpz(buffer) {
  const view = new DataView(buffer), arrays = {};
  let at = 0;
  while (at + 30 <= buffer.byteLength && view.getUint32(at, true) === 0x04034b50) {  // a local file header
    const method = view.getUint16(at + 8, true), size = view.getUint32(at + 18, true);
    const nameLength = view.getUint16(at + 26, true), extraLength = view.getUint16(at + 28, true);
    const name = new TextDecoder().decode(new Uint8Array(buffer, at + 30, nameLength));
    const start = at + 30 + nameLength + extraLength;
    if (method !== 0) throw new Error(`${name} is compressed: expected a stored .npz`);
    arrays[name.replace(/\.npy$/, "")] = readNpy(buffer.slice(start, start + size));
    at = start + size;
  }
  return arrays;
}

function readNpy(buffer) {
  const view = new DataView(buffer);
  const major = view.getUint8(6);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(new Uint8Array(buffer, offset, headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const body = buffer.slice(offset + headerLength);
  if (descr === "<f4") return { data: new Float32Array(body), shape };
  if (descr === "<i4") return { data: new Int32Array(body), shape };
  if (descr === "<f2") return { data: halfToFloat(new Uint16Array(body)), shape };
  throw new Error(`unexpected dtype ${descr}`);
}

function halfToFloat(halves) {
  const floats = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i], sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    floats[i] = exponent === 0 ? sign * 2 ** -14 * (fraction / 1024)
      : exponent === 31 ? (fraction ? NaN : sign * Infinity)
      : sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
  }
  return floats;
}
