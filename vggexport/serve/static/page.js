// The try-it page: classify an image through this server's own endpoints, show the model card.
"use strict";

const state = {
  name: document.body.dataset.model, shape: null, file: null, busy: false, pending: null,
  returnInput: true,  // off after a server says it cannot return the pixels its model saw
};
const $ = (id) => document.getElementById(id);

async function requestJson(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

function modelUrl(suffix) {
  return `v2/models/${encodeURIComponent(state.name)}${suffix}`;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
  status.classList.remove("answer");
}

function addRow(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value); else dd.textContent = String(value);
  list.append(dt, dd);
}

function chips(values) {
  const box = document.createElement("div");
  box.className = "chips";
  for (const value of values) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = value;
    box.append(chip);
  }
  return box;
}

function renderCard(meta) {
  const card = $("card");
  card.replaceChildren();
  const input = (meta.inputs || [])[0];
  const params = meta.parameters || {};
  addRow(card, "name", meta.name);
  addRow(card, "platform", meta.platform || "");
  if (meta.versions) addRow(card, "versions", meta.versions.join(", "));
  if (input) {
    addRow(card, "input", `${input.name} ${input.datatype} [${input.shape.join(", ")}]`);
    state.shape = input.shape.slice(-3);
  }
  for (const output of meta.outputs || []) {
    addRow(card, "output", `${output.name} ${output.datatype} [${output.shape.join(", ")}]`);
  }
  for (const [key, value] of Object.entries(params)) {
    if (key === "class_names") continue;
    if (value === null || typeof value === "object") continue;
    addRow(card, key.replaceAll("_", " "), value);
  }
  if (Array.isArray(params.class_names)) {
    addRow(card, `classes (${params.class_names.length})`, chips(params.class_names.slice(0, 40)));
  }
}

async function loadModel() {
  if (!state.name) {
    setStatus("This server did not say which model it serves.", true);
    return;
  }
  try {
    renderCard(await requestJson(modelUrl("")));
  } catch (error) {
    $("card").replaceChildren();
    addRow($("card"), "status", `unavailable: ${error.message}`);
  }
}

function renderPredictions(predictions) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of predictions) {
    const item = document.createElement("li");
    item.dataset.index = p.index;
    item.dataset.label = p.label;
    item.dataset.probability = p.probability;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    label.title = `class ${p.index}`;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${Math.max(0.5, p.probability * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(p.probability * 100).toFixed(1)}%`;
    item.append(label, track, value);
    list.append(item);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot display this file"));
    image.src = url;
  });
}

// Until the server returns its own input (return_input), approximate it: the upload stretched to the
// model's input size, in grey for one-channel models. The server's resize is antialiased bilinear.
async function approximateInput(previewUrl) {
  const [channels, height, width] = state.shape || [3, 224, 224];
  const size = (n) => (Number.isInteger(n) && n > 0 ? n : 224);
  const canvas = document.createElement("canvas");
  canvas.width = size(width);
  canvas.height = size(height);
  const context = canvas.getContext("2d");
  if (channels === 1) context.filter = "grayscale(1)";
  context.drawImage(await loadImage(previewUrl), 0, 0, canvas.width, canvas.height);
  return { url: canvas.toDataURL("image/png"), width: canvas.width, height: canvas.height };
}

async function showModelInput(body, previewUrl) {
  const image = $("model-input");
  const caption = $("model-input-caption");
  if (typeof body.input_image === "string" && body.input_image.startsWith("data:image/")) {
    image.src = body.input_image;
    caption.textContent = "What the model saw, as the server preprocessed it";
    return;
  }
  try {
    const approx = await approximateInput(previewUrl);
    image.src = approx.url;
    caption.textContent = `Your image resized to ${approx.width}×${approx.height} in the browser: an ` +
      "approximation, as this server does not return the input it computed";
  } catch (_) {
    image.removeAttribute("src");
    caption.textContent = "The browser cannot show this image";
  }
}

async function postImage(file) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const query = `top_k=${$("top-k").value}${state.returnInput ? "&return_input=true" : ""}`;
  try {
    return await requestJson(modelUrl(`/classify?${query}`), { method: "POST", body: form });
  } catch (error) {
    // A model exported without its pixels output cannot return its input; ask again without it.
    if (!state.returnInput || !/pixels it saw|return_input/.test(error.message)) throw error;
    state.returnInput = false;
    return postImage(file);
  }
}

async function classify(file) {
  if (!file || !state.name) return;
  if (state.busy) {  // one request at a time; the latest choice runs next
    state.pending = file;
    return;
  }
  state.file = file;
  state.busy = true;
  const previewUrl = URL.createObjectURL(file);
  $("upload-preview").src = previewUrl;
  setStatus(`Classifying ${file.name || "the image"}…`);
  const started = performance.now();
  try {
    const body = await postImage(file);
    renderPredictions(body.predictions || []);
    $("timing").textContent = `answered in ${(performance.now() - started).toFixed(0)} ms by ${body.model_name}`;
    await showModelInput(body, previewUrl);
    $("result").hidden = false;
    const top = (body.predictions || [])[0];
    setStatus(top ? `${top.label} (${(top.probability * 100).toFixed(1)}%)` : "No prediction");
    $("status").classList.add("answer");
    document.body.dataset.state = "classified";
  } catch (error) {
    setStatus(`Could not classify ${file.name || "the image"}: ${error.message}`, true);
    document.body.dataset.state = "error";
  } finally {
    state.busy = false;
    const next = state.pending;
    state.pending = null;
    if (next) classify(next);
  }
}

function wireInputs() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => classify(event.target.files[0]));
  $("top-k").addEventListener("change", () => classify(state.file));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    classify(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) classify(item.getAsFile());
  });
}

wireInputs();
loadModel().then(() => { document.body.dataset.ready = "true"; });
