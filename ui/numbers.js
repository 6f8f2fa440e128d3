// digits: the page's Number mode. Draw a number on a wide canvas (mouse, touch, pen) or upload
// a picture of one; POST it to the gateway's /api/numbers and show the string, a box and a
// probability bar per digit over the picture, and each digit as the network saw it (28x28).
"use strict";

(() => {
  const WIDE = 840;            // logical canvas: three digits' width per 280 of height
  const HIGH = 280;
  const $ = (id) => document.getElementById(id);
  let busy = null;
  let sentUrl = null;

  // ---------------------------------------------------------------- Digit / Number mode

  function setMode(mode) {
    const number = mode === "number";
    for (const el of document.querySelectorAll("[data-digit-mode]")) el.hidden = number;
    $("numbers").hidden = !number;
    if (number) $("maps-section").hidden = true;
    document.dispatchEvent(new CustomEvent("digits:cleared")); // no correction box for the other mode's answer
    document.dispatchEvent(new CustomEvent("digits:mode", { detail: { mode } })); // batch.js reads new files so
    $("mode-digit").setAttribute("aria-pressed", String(!number));
    $("mode-number").setAttribute("aria-pressed", String(number));
    if (number) pad.resize();
  }
  $("mode-digit").addEventListener("click", () => setMode("digit"));
  $("mode-number").addEventListener("click", () => setMode("number"));

  // ---------------------------------------------------------------- drawing

  const pad = DrawingPad.attach($("num-pad"), {
    width: WIDE,
    height: HIGH,
    onChange(empty) {
      $("num-hint").hidden = !empty;
      $("num-undo").disabled = pad.empty;
      $("num-clear").disabled = empty;
    },
  });
  $("num-pad").addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); pad.undo(); }
    else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); pad.clear(); }
    else if (e.key === "Enter") { e.preventDefault(); readDrawing(); }
  });
  $("num-undo").addEventListener("click", () => pad.undo());
  $("num-clear").addEventListener("click", () => { pad.clear(); say(""); });
  $("num-read").addEventListener("click", readDrawing);

  async function readDrawing() {
    if (pad.empty) {
      say("Write a number first: the canvas is empty.", "warn");
      return;
    }
    await read(await pad.blob(), "your number");
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
      const { r, body } = await postImage("api/numbers", blob, { signal: controller.signal });
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

  const pct = percent; // app.js's: a calibrated 0.9996 is not shown as a rounded-up 100%

  // ---------------------------------------------------------------- the answer

  function show(a, blob) {
    $("num-answer").hidden = false;
    // feedback.js offers a correction of this answer, under the number.
    document.dispatchEvent(new CustomEvent("digits:answer", { detail: { answer: a, blob, place: $("num-feedback") } }));
    const unsure = a.text === null;
    $("num-text").textContent = unsure ? `${a.guess}?` : a.text;
    // with no answer, the confidence is the best reading's (the check of a short reading by the
    // digits network leaves it as numbers gave it): say so, not "sure of the whole number"
    $("num-confidence").textContent = unsure ? `${pct(a.confidence)} sure of its best reading, ${a.guess}`
      : `${pct(a.confidence)} sure of the whole number`;
    const note = $("num-unsure");
    note.hidden = !unsure;
    // the reason says why (unsure of the string, or a digit that is no digit read alone); the
    // guess is already shown above it, with a question mark
    note.textContent = unsure ? `No answer. ${sentence(a.reason)}` : "";
    // separators are no digits: the text leaves them out, "written" puts back where they were
    const written = $("num-written");
    written.hidden = unsure || !a.written || a.written === a.text;
    written.textContent = written.hidden ? "" : `As written: ${a.written}`;

    // The picture sent, with each digit's box and its reading over it. Boxes are in the
    // picture's own pixels: place them in percent of its natural size.
    if (sentUrl) URL.revokeObjectURL(sentUrl);
    sentUrl = URL.createObjectURL(blob);
    const img = $("num-sent");
    const overlay = $("num-boxes");
    overlay.replaceChildren();
    img.onload = () => {
      const W = img.naturalWidth, H = img.naturalHeight;
      const place = (className, [x, y, w, h]) => {
        const box = document.createElement("div");
        box.className = className;
        box.style.left = `${(100 * x) / W}%`;
        box.style.top = `${(100 * y) / H}%`;
        box.style.width = `${(100 * w) / W}%`;
        box.style.height = `${(100 * h) / H}%`;
        return box;
      };
      a.digits.forEach((d, k) => {
        const box = place("num-box", d.box);
        box.dataset.k = String(k);
        const tag = document.createElement("span");
        tag.textContent = `${d.digit} · ${pct(d.confidence)}`;
        box.append(tag);
        overlay.append(box);
      });
      (a.marks || []).forEach((m) => { // the separators and other marks seen beside the digits
        const box = place("num-mark", m.box);
        box.title = m.mark;
        overlay.append(box);
      });
    };
    img.src = sentUrl;

    // One card per digit: what it looked like to the model (its stretch of the answer's input
    // strip, the columns the network read it in) and its ten probabilities.
    const strip = new Image();
    const cards = $("num-digits");
    cards.replaceChildren();
    strip.onload = () => {
      a.digits.forEach((d, k) => {
        const card = document.createElement("figure");
        card.className = "num-digit";
        const eye = document.createElement("canvas");
        const [left, right] = d.columns;
        const w = Math.max(1, right - left), h = strip.naturalHeight;
        eye.width = w;
        eye.height = h;
        eye.style.width = `${(56 * w) / h}px`; // the card's 56 px height, the stretch's own shape
        eye.className = "pixels";
        eye.setAttribute("role", "img");
        eye.setAttribute("aria-label", `Digit ${k + 1} as the model saw it (${w} by ${h} pixels of the strip)`);
        eye.getContext("2d").drawImage(strip, left, 0, w, h, 0, 0, w, h);
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

  window.addEventListener("resize", () => { if (!$("numbers").hidden) pad.resize(); });
})();
