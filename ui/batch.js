// digits: many images at once. Each chosen or dropped file goes through the gateway like a
// single upload (POST /api/predict, or /api/numbers for files added in Number mode), at most
// IN_FLIGHT at a time; the answers fill a table that downloads as CSV. Nothing leaves the
// page except those requests.
"use strict";

(() => {
  const IN_FLIGHT = 4;       // requests at once: enough to fill the server's batches, polite to others
  const $ = (id) => document.getElementById(id);
  const table = $("batch-table");
  const body = table.querySelector("tbody");
  const queue = [];          // rows waiting for a request
  const rows = [];           // every row of this batch, in the order chosen
  let inFlight = 0;
  let maxInFlight = 0;       // the most requests this page ever had at once (shown to tests as data-max-in-flight)
  // Which model reads the files added now: the page's mode (numbers.js says when it changes).
  // key: the answer's field, null (with a guess and a reason) when the model gives no answer
  const MODELS = { digit: { model: "digits", path: "api/predict", key: "digit", what: "one digit each" },
                   number: { model: "numbers", path: "api/numbers", key: "text", what: "one number each" } };
  let mode = MODELS.digit;
  document.addEventListener("digits:mode", (e) => {
    mode = MODELS[e.detail.mode];
    $("batch-what").textContent = mode.what;
  });

  function addRow(file) {
    const tr = document.createElement("tr");
    tr.dataset.status = "queued";
    const thumbCell = document.createElement("td");
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = `Thumbnail of ${file.name}`;
    img.width = 40;
    img.height = 40;
    const url = URL.createObjectURL(file);
    img.addEventListener("error", () => { img.hidden = true; }); // not a picture the browser can show
    img.src = url;
    thumbCell.append(img);
    const cells = {};
    tr.append(thumbCell);
    for (const name of ["file", "answer", "confidence", "status"]) {
      const td = document.createElement("td");
      td.className = `batch-${name}`;
      cells[name] = td;
      tr.append(td);
    }
    cells.file.textContent = file.name;
    cells.answer.textContent = "…";
    cells.status.textContent = "Waiting";
    body.append(tr);
    const row = { file, url, tr, cells, reader: mode, answer: null, written: "", confidence: null, status: "queued", detail: "" };
    tr.dataset.model = mode.model;
    rows.push(row);
    queue.push(row);
    return row;
  }

  function settle(row, status, text, detail) {
    row.status = status;
    row.detail = detail || "";
    row.tr.dataset.status = status;
    row.cells.status.textContent = text;
    row.cells.status.title = row.detail;
  }

  function show(row, httpStatus, answer) {
    const key = row.reader.key;
    if (httpStatus === 200 && answer && key in answer && typeof answer.confidence === "number") {
      row.confidence = answer.confidence;
      row.cells.confidence.textContent = percent(answer.confidence); // app.js's: never a rounded-up 100%
      if (answer[key] === null) {
        row.cells.answer.textContent = `? (guess ${answer.guess})`;
        row.tr.dataset.answer = "";
        settle(row, "unsure", `No answer: ${answer.reason}`, answer.reason);
      } else {
        row.answer = String(answer[key]);
        row.written = typeof answer.written === "string" ? answer.written : ""; // numbers: with its separators
        row.cells.answer.textContent = row.answer;
        row.tr.dataset.answer = row.answer;
        settle(row, "ok", "Read");
      }
      return;
    }
    const code = (answer && answer.error) || `http_${httpStatus}`;
    const detail = (answer && answer.detail) || `the server answered HTTP ${httpStatus}`;
    row.cells.answer.textContent = "—";
    row.cells.confidence.textContent = "";
    row.tr.dataset.error = code;
    settle(row, "error", `Error (${code}): ${detail}`, detail);
  }

  async function read(row) {
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    table.dataset.inFlight = String(inFlight);
    table.dataset.maxInFlight = String(maxInFlight);
    settle(row, "reading", "Reading…");
    try {
      const { r, body } = await postImage(row.reader.path, row.file, { headers: { "X-Activations": "off" } });
      show(row, r.status, body);
    } catch {
      row.cells.answer.textContent = "—";
      settle(row, "error", "Error: the page could not reach its server", "the page could not reach its server");
    } finally {
      inFlight -= 1;
      table.dataset.inFlight = String(inFlight);
      progress();
    }
  }

  // IN_FLIGHT runners share the queue: each takes the next row when its request is answered.
  let runners = 0;
  async function runner() {
    runners += 1;
    try {
      while (queue.length) await read(queue.shift());
    } finally {
      runners -= 1;
    }
  }

  function progress() {
    const done = rows.filter((r) => ["ok", "unsure", "error"].includes(r.status)).length;
    table.dataset.done = String(done);
    $("batch-summary").textContent = rows.length
      ? `${done} of ${rows.length} read${done === rows.length ? "" : "…"} (${rows.filter((r) => r.status === "error").length} errors)`
      : "";
    $("batch-csv").disabled = done === 0 || done < rows.length;
    $("batch-clear").disabled = rows.length === 0 || done < rows.length;
  }

  function add(files) {
    if (!files.length) return;
    table.hidden = false;
    for (const file of files) addRow(file);
    progress();
    const start = Math.min(IN_FLIGHT - runners, queue.length);
    for (let i = 0; i < start; i++) runner();
  }

  // A spreadsheet must not run a file name as a formula (CSV injection).
  function csvField(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function csv() {
    const lines = [["file", "model", "answer", "written", "confidence", "status", "detail"]];
    for (const r of rows) {
      lines.push([r.file.name, r.reader.model, r.answer, r.written, r.confidence === null ? "" : r.confidence.toFixed(4),
                  r.status, r.detail]);
    }
    return lines.map((l) => l.map(csvField).join(",")).join("\r\n") + "\r\n";
  }

  $("batch-csv").addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "digits-results.csv";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000); // after the browser has taken the download
  });

  $("batch-clear").addEventListener("click", () => {
    for (const r of rows) URL.revokeObjectURL(r.url);
    rows.length = 0;
    body.replaceChildren();
    table.hidden = true;
    delete table.dataset.maxInFlight;
    maxInFlight = 0;
    progress();
  });

  $("batch-files").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = ""; // choosing the same files again fires change again
    add(files);
  });

  dropZone($("batch-drop"), add);

  table.dataset.limit = String(IN_FLIGHT);
  progress();
})();
