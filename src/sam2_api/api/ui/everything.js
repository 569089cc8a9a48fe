// "Segment everything": every object of the chosen image, each in its own colour; click one to get
// the link to its mask PNG. Independent of app.js: it reads the chosen file from #file and shows its
// own canvas in place of #canvas (at the same size on screen) until the button is pressed again or
// another image is chosen. The objects' masks come back as COCO RLE (formats: ["rle"]) and are
// painted here, with the server's overlap rule (the higher predicted_iou wins), so that no pixel
// is read from another origin. Parameters of POST /segment_everything can be added to the page's
// address: /ui/?points_per_side=16&crop_n_layers=1.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  const button = byId("everything"), view = byId("everything-canvas"), shown = byId("everything-result");
  const grid = byId("points-per-side");
  grid.value = new URLSearchParams(location.search).get("points_per_side") || "";  // ?points_per_side=… fills it
  const pen = view.getContext("2d");
  Object.assign(view.style, { display: "block", cursor: "pointer" });
  const current = { active: false, objects: [], palette: [], labels: null, base: null, selected: -1, sent: 0,
                    resultWasHidden: true };

  // The colour of object `label` (1-based): hues a golden-ratio step apart; the CLI's object_colour.
  function colour(label) {
    const hue = (label * 0.6180339887498949) % 1, sector = Math.floor(hue * 6), f = hue * 6 - sector;
    const v = 0.95, s = 0.75, low = v * (1 - s), falling = v * (1 - s * f), rising = v * (1 - s * (1 - f));
    const rgb = [[v, rising, low], [falling, v, low], [low, v, rising], [low, falling, v], [rising, low, v],
                 [v, low, falling]][sector % 6];
    return rgb.map((c) => Math.round(255 * c));
  }

  // COCO's compressed RLE string → run lengths (pycocotools' rleFrString), column-major, background first.
  function runs(text) {
    const counts = [];
    for (let p = 0; p < text.length;) {
      let x = 0, k = 0, more = true;
      while (more) {
        const c = text.charCodeAt(p++) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = (c & 0x20) !== 0;
        k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // The label map: 0 = no object, i = objects[i - 1]; painted lowest score first, so the higher
  // predicted_iou wins (on equal scores, the earlier object).
  function labelMap(objects, width, height) {
    const labels = new Uint16Array(width * height);
    const order = objects.map((_, i) => i)
      .sort((a, b) => objects[a].predicted_iou - objects[b].predicted_iou || b - a);
    for (const index of order) {
      let at = 0;
      runs(objects[index].rle.counts).forEach((count, k) => {
        if (k % 2) for (let j = at; j < at + count; j++) labels[(j % height) * width + Math.floor(j / height)] = index + 1;
        at += count;
      });
    }
    return labels;
  }

  // Each object tinted half-way to its colour (halves rounded up, as the CLI's overlay), outlined
  // (on either side of a change of label) in its colour, the selected one in white.
  function paint() {
    const { base, labels, selected, palette } = current, { width, height } = view;
    const out = new ImageData(new Uint8ClampedArray(base.data), width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x, label = labels[i];
        if (!label) continue;
        const edge = (x > 0 && labels[i - 1] !== label) || (x < width - 1 && labels[i + 1] !== label)
          || (y > 0 && labels[i - width] !== label) || (y < height - 1 && labels[i + width] !== label);
        const rgb = edge && label === selected + 1 ? [255, 255, 255] : palette[label];
        for (let c = 0; c < 3; c++) {
          out.data[4 * i + c] = edge ? rgb[c] : (base.data[4 * i + c] + rgb[c] + 1) >> 1;
        }
      }
    }
    pen.putImageData(out, 0, 0);
  }

  function status(text) { byId("status").textContent = text; }

  function fitToPage() {  // the size on screen that app.js gives #canvas
    view.style.width = byId("canvas").style.width;
    view.style.height = byId("canvas").style.height;
  }

  function show(active) {  // our view in place of app.js's canvas and result, or back
    if (active === current.active) return;
    current.active = active;
    view.hidden = !active;
    byId("canvas").hidden = active;
    shown.hidden = true;
    if (active) {
      current.resultWasHidden = byId("result").hidden;
      byId("result").hidden = true;
      fitToPage();
    } else {
      byId("result").hidden = current.resultWasHidden;
    }
    button.textContent = active ? "Back to clicking" : "Segment everything";
  }

  function form(file) {
    const body = new FormData();
    body.append("image", file);
    body.append("formats", JSON.stringify(["rle"]));
    if (grid.value) body.append("points_per_side", grid.value);  // empty: the server's default for its device
    for (const [name, value] of new URLSearchParams(location.search)) {
      if (name === "image" || name === "formats" || name === "points_per_side") continue;  // the page's own
      try { JSON.parse(value); body.append(name, value); } catch { body.append(name, JSON.stringify(value)); }
    }
    return body;
  }

  async function segmentEverything() {
    const file = byId("file").files[0];
    if (!file) return;
    const sent = ++current.sent;
    const headers = {}, key = sessionStorage.getItem("sam2-api-key");
    if (key) headers.Authorization = `Bearer ${key}`;
    button.disabled = true;
    status("Segmenting everything…");
    try {
      const image = await createImageBitmap(file, { imageOrientation: "from-image" });
      const response = await fetch("../segment_everything", { method: "POST", body: form(file), headers });
      const body = await response.json().catch(() => ({ error: response.statusText }));
      if (sent !== current.sent) return;
      if (!response.ok) { status(`Error ${response.status}: ${body.error || JSON.stringify(body)}`); return; }
      if (image.width !== body.width || image.height !== body.height) {
        throw new Error(`the server saw a ${body.width}×${body.height} image, this browser ${image.width}×${image.height}`);
      }
      Object.assign(view, { width: body.width, height: body.height });
      pen.drawImage(image, 0, 0);
      Object.assign(current, {
        objects: body.objects, selected: -1, base: pen.getImageData(0, 0, body.width, body.height),
        labels: labelMap(body.objects, body.width, body.height),
        palette: [null, ...body.objects.map((_, i) => colour(i + 1))],
      });
      paint();
      show(true);
      status(`${body.objects.length} objects. Click one for its mask.`);
    } catch (error) {
      if (sent === current.sent) status(`Request failed: ${error.message}`);
    } finally {
      if (sent === current.sent) button.disabled = false;
    }
  }

  button.addEventListener("click", () => {
    if (!current.active) { segmentEverything(); return; }
    show(false);
    status("Click the object.");
  });
  byId("file").addEventListener("change", () => { current.sent++; show(false); button.disabled = !byId("file").files[0]; });
  window.addEventListener("resize", () => { if (current.active) fitToPage(); });
  view.addEventListener("click", (event) => {
    const rect = view.getBoundingClientRect();
    const x = Math.min(view.width - 1, Math.floor(((event.clientX - rect.left) * view.width) / rect.width));
    const y = Math.min(view.height - 1, Math.floor(((event.clientY - rect.top) * view.height) / rect.height));
    current.selected = current.labels[y * view.width + x] - 1;
    paint();
    const found = current.objects[current.selected];
    shown.hidden = !found;
    if (!found) { status("No object here."); return; }
    status(`Object ${current.selected + 1} of ${current.objects.length}: ${found.area} pixels.`);
    byId("everything-score").textContent = found.predicted_iou.toFixed(3);
    byId("everything-link").hidden = !found.mask_url;
    if (found.mask_url) byId("everything-link").href = found.mask_url;
  });
})();
