// digits: the page's Number mode. Draw a number on a wide canvas (mouse, touch, pen) or upload
// a picture of one; POST it to the gateway's /api/numbers and show the string, a box and a
// probability bar per digit over the picture, and each digit as the network saw it (28x28).
"use strict";

(() => {
  const WIDE = 840;            // logical canvas: three digits' width per 280 of height
  const HIGH = 280;
  const STROKE = 18;           // as the digit canvas
  const INK = "#111827";
  const $ = (id) => document.getElementById(id);
  const pad = $("num-pad");
  const ctx = pad.getContext("2d");
  const strokes = [];
  let current = null;
  let busy = null;
  let sentUrl = null;

  // ---------------------------------------------------------------- Digit / Number mode

  function setMode(mode) {
    const number = mode === "number";
    for (const el of document.querySelectorAll("[data-digit-mode]")) el.hidden = number;
    $("numbers").hidden = !number;
    if (number) $("maps-section").hidden = true;
    document.dispatchEvent(new CustomEvent("digits:cleared")); // no correction box for the other mode's answer
    $("mode-digit").setAttribute("aria-pressed", String(!number));
    $("mode-number").setAttribute("aria-pressed", String(number));
    if (number) resize();
  }
  $("mode-digit").addEventListener("click", () => setMode("digit"));
  $("mode-number").addEventListener("click", () => setMode("number"));

  // ---------------------------------------------------------------- drawing

  function resize() {
    const w = pad.clientWidth || WIDE;
    const px = Math.round(w * (window.devicePixelRatio || 1));
    if (pad.width !== px) {
      pad.width = px;
      pad.height = Math.round(px * HIGH / WIDE);
    }
    redraw();
  }

  function paint(c, scale, list) {
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.clearRect(0, 0, c.canvas.width, c.canvas.height);
    c.setTransform(scale, 0, 0, scale, 0, 0);
    c.lineWidth = STROKE;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.strokeStyle = INK;
    c.fillStyle = INK;
    for (const pts of list) {
      c.beginPath();
      if (pts.length === 1) {
        c.arc(pts[0][0], pts[0][1], STROKE / 2, 0, 2 * Math.PI);
        c.fill();
        continue;
      }
      c.moveTo(pts[0][0], pts[0][1]);
      for (let i = 1; i < pts.length - 1; i++) {
        c.quadraticCurveTo(pts[i][0], pts[i][1], (pts[i][0] + pts[i + 1][0]) / 2, (pts[i][1] + pts[i + 1][1]) / 2);
      }
      const last = pts[pts.length - 1];
      c.lineTo(last[0], last[1]);
      c.stroke();
    }
  }

  function redraw() {
    const list = current ? [...strokes, current.points] : strokes;
    paint(ctx, pad.width / WIDE, list);
    $("num-hint").hidden = list.length > 0;
    $("num-undo").disabled = strokes.length === 0;
    $("num-clear").disabled = list.length === 0;
  }

  function toLogical(e) {
    const r = pad.getBoundingClientRect();
    const x = ((e.clientX - r.left - pad.clientLeft) / pad.clientWidth) * WIDE;
    const y = ((e.clientY - r.top - pad.clientTop) / pad.clientHeight) * HIGH;
    return [Math.min(WIDE, Math.max(0, x)), Math.min(HIGH, Math.max(0, y))];
  }

  pad.addEventListener("pointerdown", (e) => {
    if (current || (e.pointerType === "mouse" && e.button !== 0)) return;
    e.preventDefault();
    pad.focus({ preventScroll: true });
    pad.setPointerCapture(e.pointerId);
    current = { id: e.pointerId, points: [toLogical(e)] };
    redraw();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!current || e.pointerId !== current.id) return;
    e.preventDefault();
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) current.points.push(toLogical(ev));
    redraw();
  });
  function endStroke(e) {
    if (!current || e.pointerId !== current.id) return;
    if (e.type === "pointerup") current.points.push(toLogical(e));
    strokes.push(current.points);
    current = null;
    redraw();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("contextmenu", (e) => e.preventDefault());
  pad.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); strokes.pop(); redraw(); }
    else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); strokes.length = 0; redraw(); }
    else if (e.key === "Enter") { e.preventDefault(); readDrawing(); }
  });
  $("num-undo").addEventListener("click", () => { strokes.pop(); redraw(); });
  $("num-clear").addEventListener("click", () => { strokes.length = 0; current = null; redraw(); say(""); });
  $("num-read").addEventListener("click", readDrawing);

  // The drawing as sent: an 840x280 PNG whatever the screen's pixel density.
  function drawingBlob() {
    const off = document.createElement("canvas");
    off.width = WIDE;
    off.height = HIGH;
    paint(off.getContext("2d"), 1, strokes);
    return new Promise((resolve) => off.toBlob(resolve, "image/png"));
  }

  async function readDrawing() {
    if (!strokes.length) {
      say("Write a number first: the canvas is empty.", "warn");
      return;
    }
    await read(await drawingBlob(), "your number");
  }

  $("num-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) read(file, `“${file.name}”`);
  });

  // ---------------------------------------------------------------- calling the gateway

  async function read(blob, what) {
    if (busy) busy.abort();
    const controller = new AbortController();
    busy = controller;
    $("num-read").disabled = true;
    say(`Reading ${what}…`, "info");
    try {
      const r = await fetch("api/numbers", {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        body: blob,
        signal: controller.signal,
      });
      let body = null;
      try { body = await r.json(); } catch { body = null; }
      if (controller !== busy) return;
      if (r.ok && body && Array.isArray(body.digits)) {
        say("");
        show(body, blob);
      } else {
        $("num-answer").hidden = true;
        document.dispatchEvent(new CustomEvent("digits:cleared"));
        const detail = body && body.detail ? body.detail : `the server answered HTTP ${r.status}`;
        say(body && body.error === "no_digit" ? `No digits found in ${what}: ${detail}` : `${what} could not be read: ${detail}`,
          r.status === 422 ? "warn" : "error");
      }
    } catch (err) {
      if (err.name !== "AbortError") say("The page could not reach its server. Is make serve still running?", "error");
    } finally {
      if (controller === busy) {
        busy = null;
        $("num-read").disabled = false;
        const section = $("numbers");
        section.dataset.answers = String(Number(section.dataset.answers || 0) + 1); // for tests and scripts
      }
    }
  }

  function say(text, kind) {
    const m = $("num-message");
    m.hidden = !text;
    m.textContent = text;
    if (kind) m.dataset.kind = kind;
  }

  const pct = (p) => `${(p * 100).toFixed(p >= 0.9995 ? 0 : 1)}%`;

  // ---------------------------------------------------------------- the answer

  function show(a, blob) {
    $("num-answer").hidden = false;
    // feedback.js offers a correction of this answer, under the number.
    document.dispatchEvent(new CustomEvent("digits:answer", { detail: { answer: a, blob, place: $("num-feedback") } }));
    const unsure = a.text === null;
    $("num-text").textContent = unsure ? `${a.guess}?` : a.text;
    $("num-confidence").textContent = `${pct(a.confidence)} sure of the whole number`;
    const note = $("num-unsure");
    note.hidden = !unsure;
    note.textContent = unsure ? `The model is unsure: ${a.reason}. Its best reading is ${a.guess}.` : "";

    // The picture sent, with each digit's box and its reading over it. Boxes are in the
    // picture's own pixels: place them in percent of its natural size.
    if (sentUrl) URL.revokeObjectURL(sentUrl);
    sentUrl = URL.createObjectURL(blob);
    const img = $("num-sent");
    const overlay = $("num-boxes");
    overlay.replaceChildren();
    img.onload = () => {
      const W = img.naturalWidth, H = img.naturalHeight;
      a.digits.forEach((d, k) => {
        const [x, y, w, h] = d.box;
        const box = document.createElement("div");
        box.className = "num-box";
        box.dataset.k = String(k);
        box.style.left = `${(100 * x) / W}%`;
        box.style.top = `${(100 * y) / H}%`;
        box.style.width = `${(100 * w) / W}%`;
        box.style.height = `${(100 * h) / H}%`;
        const tag = document.createElement("span");
        tag.textContent = `${d.digit} · ${pct(d.confidence)}`;
        box.append(tag);
        overlay.append(box);
      });
    };
    img.src = sentUrl;

    // One card per digit: what it looked like to the model (its 28x28 slice of the answer's
    // input strip) and its ten probabilities.
    const strip = new Image();
    const cards = $("num-digits");
    cards.replaceChildren();
    strip.onload = () => {
      a.digits.forEach((d, k) => {
        const card = document.createElement("figure");
        card.className = "num-digit";
        const eye = document.createElement("canvas");
        eye.width = 28;
        eye.height = 28;
        eye.className = "pixels";
        eye.setAttribute("role", "img");
        eye.setAttribute("aria-label", `Digit ${k + 1} as the model saw it (28 by 28 pixels)`);
        eye.getContext("2d").drawImage(strip, 28 * k, 0, 28, 28, 0, 0, 28, 28);
        const cap = document.createElement("figcaption");
        cap.innerHTML = "<strong></strong> <span></span>";
        cap.firstChild.textContent = String(d.digit);
        cap.lastChild.textContent = pct(d.confidence);
        const bars = document.createElement("div");
        bars.className = "num-bars";
        bars.setAttribute("role", "img");
        bars.setAttribute("aria-label", "Probabilities: " + d.probabilities.map((p, i) => `${i}: ${pct(p)}`).join(", "));
        d.probabilities.forEach((p, i) => {
          const bar = document.createElement("span");
          bar.className = "num-bar" + (i === d.digit ? " chosen" : "");
          bar.style.height = `${Math.max(2, p * 100)}%`;
          bar.title = `${i}: ${pct(p)}`;
          bars.append(bar);
        });
        card.append(eye, cap, bars);
        cards.append(card);
      });
    };
    strip.src = `data:image/png;base64,${a.input}`;
    $("model-name").textContent = a.model || "numbers";
    $("model-version").textContent = a.version ? ` v${a.version}` : "";
  }

  window.addEventListener("resize", () => { if (!$("numbers").hidden) resize(); });
})();
