// digits: correcting an answer. After each answer the page offers "Wrong? Tell us what it
// says"; a correction is POSTed to the gateway's /api/feedback only when the person has ticked
// the consent box, and the gateway keeps it (image included) to retrain the model.
// app.js (Digit mode) and numbers.js (Number mode) announce answers with the "digits:answer"
// event, whose detail may name the element to show the box in (`place`), and clear with
// "digits:cleared".
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const box = $("feedback");
  const form = $("feedback-form");
  const input = $("feedback-label");
  const consent = $("feedback-consent");
  const status = $("feedback-status");
  const home = box.parentNode; // where the box sits for Digit mode's answers
  const after = box.nextSibling;
  let last = null; // {answer, blob} of the answer on screen

  // What a label may be: one digit for "digits"; a model that reads several digits takes more.
  const oneDigit = (model) => model === "digits";

  function say(text, kind) {
    status.hidden = !text;
    status.textContent = text || "";
    status.dataset.kind = kind || "";
  }

  function reset() {
    form.hidden = true;
    $("wrong").hidden = false;
    $("wrong").setAttribute("aria-expanded", "false");
    input.value = "";
    consent.checked = false;
    say("");
  }

  document.addEventListener("digits:answer", (e) => {
    last = e.detail;
    if (last.place) last.place.appendChild(box);
    else if (box.parentNode !== home) home.insertBefore(box, after);
    const many = !oneDigit(last.answer.model || "digits");
    input.maxLength = many ? 32 : 1;
    input.pattern = many ? "[0-9]{1,32}" : "[0-9]";
    $("feedback-what").textContent = many ? "the number" : "the digit";
    box.hidden = false;
    reset();
  });

  document.addEventListener("digits:cleared", () => {
    last = null;
    box.hidden = true;
  });

  $("wrong").addEventListener("click", () => {
    form.hidden = false;
    $("wrong").hidden = true;
    $("wrong").setAttribute("aria-expanded", "true");
    input.focus();
  });

  $("feedback-cancel").addEventListener("click", reset);

  function asDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!last) return;
    const label = input.value.trim();
    const model = last.answer.model || "digits";
    if (!new RegExp(`^${input.pattern}$`).test(label)) {
      say(oneDigit(model) ? "Type the one digit it shows, 0 to 9." : "Type the number it shows, digits only.", "warn");
      input.focus();
      return;
    }
    if (!consent.checked) {
      say("Nothing was sent. Tick the box to let us keep this image, or press Cancel.", "warn");
      consent.focus();
      return;
    }
    // digits answers "digit", numbers answers "text"; either is null when the model declined.
    const said = "digit" in last.answer ? last.answer.digit : last.answer.text;
    const answer = said === null || said === undefined ? null : String(said);
    $("feedback-send").disabled = true;
    say("Sending…", "info");
    try {
      const r = await fetch("api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          image: await asDataUrl(last.blob), label, model,
          version: last.answer.version || "", answer, consent: true,
        }),
      });
      let body = null;
      try { body = await r.json(); } catch { body = null; }
      if (r.status === 201) {
        form.hidden = true;
        say(`Thank you: kept as correction ${body.id}, “${label}”. It helps the next version of the model.`, "ok");
        box.dataset.sent = String(Number(box.dataset.sent || 0) + 1); // for tests and scripts
      } else {
        say(`Not kept: ${body && body.detail ? body.detail : `the server answered HTTP ${r.status}.`}`, "error");
      }
    } catch {
      say("Not kept: the page could not reach its server.", "error");
    } finally {
      $("feedback-send").disabled = false;
    }
  });
})();
