// digits: the page. Draw on a canvas or upload a picture; POST it to the gateway's
// /api/predict (same origin: the browser never holds TorchServe's keys) and show the answer.
"use strict";

const CANVAS = 280;          // logical canvas side; strokes are recorded in these units
const SIZE_STEP = 1024 * 1024;
// Defaults until /api/health tells the server's own limits.
const limits = {
  maxBytes: 5 * SIZE_STEP,
  types: ["image/bmp", "image/gif", "image/jpeg", "image/png", "image/webp"],
};

const $ = (id) => document.getElementById(id);
let busy = null;             // AbortController of the request in flight
let sentUrl = null;          // object URL of the image shown under "You sent"

// ------------------------------------------------------------------ drawing

const pad = DrawingPad.attach($("pad"), {
  width: CANVAS,
  height: CANVAS,
  onChange(empty) {
    $("pad-hint").hidden = !empty;
    $("undo").disabled = pad.empty;
    $("clear").disabled = empty;
  },
  onStrokeEnd() { if ($("live").checked) predictDrawing(); },
});

function undo() {
  pad.undo();
  if ($("live").checked && !pad.empty) predictDrawing();
}

function clearPad() {
  pad.clear();
  hideMessage();
}

$("pad").addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
  else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); clearPad(); }
  else if (e.key === "Enter" || e.key === " ") { e.preventDefault(); predictDrawing(); }
});

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearPad);
$("predict").addEventListener("click", predictDrawing);

async function predictDrawing() {
  if (pad.empty) {
    showMessage("Draw a digit first: the canvas is empty.", "warn");
    return;
  }
  await predict(await pad.blob(), "your drawing");
}

// ------------------------------------------------------------------ upload

function humanSize(bytes) {
  if (bytes < SIZE_STEP) return `${Math.ceil(bytes / 1024)} KB`;
  const mb = bytes / SIZE_STEP;
  return `${Number.isInteger(mb) ? mb : mb.toFixed(1)} MB`;
}

// A reason to refuse the file in the page, or null. The server checks again.
function refusal(file) {
  const kinds = "PNG, JPEG, GIF, BMP or WebP";
  const type = (file.type || "").toLowerCase();
  if (!limits.types.includes(type)) {
    if (/^image\/hei[cf]/.test(type) || /\.hei[cf]$/i.test(file.name || "")) {
      return `“${file.name}” is a HEIC photo (an iPhone's default format). Share or export it as JPEG, then choose it again.`;
    }
    const what = type === "application/pdf" ? "a PDF document"
      : type.startsWith("text/") ? "a text file"
      : type ? `a file of type ${type}` : "a file of unknown type";
    return `“${file.name}” is ${what}. Please choose an image: ${kinds}.`;
  }
  if (file.size === 0) return `“${file.name}” is empty.`;
  if (file.size > limits.maxBytes) {
    return `“${file.name}” is ${humanSize(file.size)}; images up to ${humanSize(limits.maxBytes)} are accepted.`;
  }
  return null;
}

async function upload(file) {
  if (!file) return;
  const reason = refusal(file);
  if (reason) {
    clearAnswer();
    showMessage(reason, "error");
    return;
  }
  await predict(file, `“${file.name}”`);
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = ""; // choosing the same file again fires change again
  upload(file);
});

// Make `zone` take dropped files: highlighted while a drag is over it, `onFiles(files)` on drop.
// The batch table (batch.js) uses it too.
function dropZone(zone, onFiles) {
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    onFiles(e.dataTransfer ? [...e.dataTransfer.files] : []);
  });
}

dropZone($("drop"), (files) => {
  if (files.length > 1) showMessage("Drop one image at a time; reading the first.", "warn");
  upload(files[0]);
});
// A file dropped beside the zone must not make the browser leave the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

// ------------------------------------------------------------------ calling the gateway

// POST a picture to one of the gateway's /api routes: the response and its JSON body (null
// when the body is not JSON). Number mode (numbers.js) and the batch table (batch.js) use it too.
async function postImage(path, blob, { signal, headers = {} } = {}) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": blob.type || "application/octet-stream", ...headers },
    body: blob,
    signal,
  });
  const body = await r.json().catch(() => null);
  return { r, body };
}

async function predict(blob, what) {
  if (busy) busy.abort();
  const controller = new AbortController();
  busy = controller;
  document.body.classList.add("busy");
  $("predict").disabled = true;
  $("result").setAttribute("aria-busy", "true");
  showMessage(`Reading ${what}…`, "info");
  try {
    const { r, body } = await postImage("api/predict", blob, { signal: controller.signal });
    if (controller !== busy) return;
    if (r.ok && body && Array.isArray(body.probabilities)) {
      hideMessage();
      showAnswer(body, blob);
      setServerState(true);
    } else {
      clearAnswer();
      showMessage(explain(r.status, body, what), r.status === 422 ? "warn" : "error");
      if (r.status >= 500) setServerState(false, body && body.detail);
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    clearAnswer();
    showMessage("The page could not reach its server. Is make serve still running?", "error");
    setServerState(false, "The page's server does not answer.");
  } finally {
    if (controller === busy) {
      busy = null;
      const result = $("result");
      result.dataset.answers = String(Number(result.dataset.answers || 0) + 1); // for tests and scripts
      document.body.classList.remove("busy");
      $("predict").disabled = false;
      $("result").removeAttribute("aria-busy");
    }
  }
}

// The server's detail as a sentence: capital first letter, full stop at the end.
function sentence(text) {
  const t = String(text).trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function explain(status, body, what) {
  const detail = sentence(body && body.detail ? body.detail : `the server answered HTTP ${status}`);
  const code = body && body.error;
  if (code === "no_digit") return `No digit found in ${what}. ${detail} Draw a digit, or upload a picture where it stands out from the background.`;
  if (status === 413) return `${sentence(`${what} is too large`)} ${detail}`;
  if (status === 415) return `Not an image the model can read: ${what}. ${detail}`;
  if (status >= 500) return `The model server is unavailable. ${detail}`;
  return `${sentence(`${what} could not be read`)} ${detail}`;
}

// ------------------------------------------------------------------ results

function percent(p) {
  if (p >= 0.9995) return "99.9%";
  if (p < 0.0005) return p > 0 ? "<0.1%" : "0%";
  return `${(p * 100).toFixed(1)}%`;
}

function showAnswer(a, blob) {
  $("placeholder").hidden = true;
  $("answer").hidden = false;
  // The server decides whether it dares to answer: "digit" is null, with a reason, when the
  // picture is unlike a digit or the model is unsure. The page never second-guesses it.
  const unsure = a.digit === null;
  const shown = unsure ? a.guess : a.digit;
  $("digit").textContent = unsure ? "?" : String(a.digit);
  $("confidence").textContent = percent(a.confidence);
  const ranked = a.probabilities.map((p, d) => [p, d]).sort((x, y) => y[0] - x[0]);
  $("answer").classList.toggle("is-unsure", unsure);
  // A picture the digits network was unsure of was read again by the numbers network: say what it saw.
  const second = a.second_reading
    ? ` Read twice: the numbers model, reading the picture as a short string, saw a ${a.second_reading.digit} ` +
      `(${percent(a.second_reading.confidence)}) near its middle.`
    : "";
  $("verdict-text").textContent = (unsure ? `No answer: the best guess, ${shown}, is not reliable.`
    : `The model reads a ${a.digit}.`) + second;
  const note = $("unsure");
  note.hidden = !unsure;
  note.textContent = unsure
    ? `The model is unsure. ${sentence(a.reason)} It could be a ${ranked[0][1]} (${percent(ranked[0][0])}) ` +
      `or a ${ranked[1][1]} (${percent(ranked[1][0])}). Try drawing it larger and clearer, in the shape most people write it.`
    : "";

  const chart = $("chart");
  chart.replaceChildren();
  chart.setAttribute("aria-label", "Probabilities: " + a.probabilities.map((p, d) => `${d}: ${percent(p)}`).join(", "));
  a.probabilities.forEach((p, d) => {
    const col = document.createElement("div");
    col.className = "col" + (d === shown ? " chosen" : "");
    col.dataset.digit = String(d);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = p >= 0.0005 ? percent(p) : "";
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.height = `${Math.max(p * 100, 0.5)}%`;
    track.append(bar);
    const label = document.createElement("span");
    label.className = "tick";
    label.textContent = String(d);
    col.append(value, track, label);
    chart.append(col);
  });

  if (sentUrl) URL.revokeObjectURL(sentUrl);
  sentUrl = URL.createObjectURL(blob);
  $("sent").src = sentUrl;
  $("model-eye").src = `data:image/png;base64,${a.input}`;

  const maps = $("maps");
  maps.replaceChildren();
  for (const layer of a.activations || []) {
    const [c, h, w] = layer.shape;
    const fig = document.createElement("figure");
    fig.className = "map";
    const img = document.createElement("img");
    img.className = "pixels";
    img.src = `data:image/png;base64,${layer.png}`;
    img.alt = `Activation maps of layer ${layer.layer}: ${c} maps of ${h} by ${w} pixels`;
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<strong></strong> <span></span>`;
    cap.firstChild.textContent = layer.layer;
    cap.lastChild.textContent = `${c} maps · ${h}×${w}`;
    fig.append(img, cap);
    maps.append(fig);
  }
  $("maps-section").hidden = !(a.activations && a.activations.length);
  $("model-name").textContent = a.model || "digits";
  $("model-version").textContent = a.version ? ` v${a.version}` : "";
  // feedback.js offers a correction of this answer.
  document.dispatchEvent(new CustomEvent("digits:answer", { detail: { answer: a, blob } }));
}

function clearAnswer() {
  document.dispatchEvent(new CustomEvent("digits:cleared"));
  $("answer").hidden = true;
  $("placeholder").hidden = false;
  $("maps-section").hidden = true;
}

function showMessage(text, kind) {
  const m = $("message");
  m.hidden = false;
  m.dataset.kind = kind;
  m.setAttribute("role", kind === "error" ? "alert" : "status");
  m.textContent = text;
}

function hideMessage() {
  const m = $("message");
  m.hidden = true;
  m.textContent = "";
}

// ------------------------------------------------------------------ start

function setServerState(ok, detail) {
  const pill = $("server-status");
  pill.dataset.state = ok ? "ok" : "down";
  pill.textContent = ok ? "Model ready" : "Model server unavailable";
  pill.title = ok ? "" : detail || "";
}

async function checkServer() {
  try {
    const r = await fetch("api/health", { cache: "no-store" });
    const body = await r.json();
    if (Number.isInteger(body.max_bytes)) limits.maxBytes = body.max_bytes;
    if (Array.isArray(body.types)) limits.types = body.types;
    $("limits").textContent = `PNG, JPEG, GIF, BMP or WebP, up to ${humanSize(limits.maxBytes)}.`;
    setServerState(r.ok, body.detail);
  } catch {
    setServerState(false, "The page's server does not answer.");
  }
}

window.addEventListener("resize", () => pad.resize());
pad.resize();
checkServer();
