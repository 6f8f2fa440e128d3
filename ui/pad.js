// digits: the drawing pad both modes use (Digit's square canvas, Number's wide one).
// Strokes are recorded in logical units (the size of the PNG sent), so what the server gets
// does not depend on the screen's size or pixel density; mouse, touch and pen all draw.
"use strict";

const DrawingPad = (() => {
  const STROKE_WIDTH = 18;   // on a 280-high canvas, as tests/fixtures/make_fixtures.py draws them
  const INK = "#111827";

  // A smooth path through the points: quadratic curves between midpoints.
  function drawStroke(c, pts) {
    c.beginPath();
    if (pts.length === 1) {
      c.arc(pts[0][0], pts[0][1], STROKE_WIDTH / 2, 0, 2 * Math.PI);
      c.fill();
      return;
    }
    c.moveTo(pts[0][0], pts[0][1]);
    for (let i = 1; i < pts.length - 1; i++) {
      c.quadraticCurveTo(pts[i][0], pts[i][1], (pts[i][0] + pts[i + 1][0]) / 2, (pts[i][1] + pts[i + 1][1]) / 2);
    }
    const last = pts[pts.length - 1];
    c.lineTo(last[0], last[1]);
    c.stroke();
  }

  function paint(c, scale, list) {
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.clearRect(0, 0, c.canvas.width, c.canvas.height);
    c.setTransform(scale, 0, 0, scale, 0, 0);
    c.lineWidth = STROKE_WIDTH;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.strokeStyle = INK;
    c.fillStyle = INK;
    for (const s of list) drawStroke(c, s);
  }

  // Make `canvas` a pad of `width` x `height` logical units. `onChange(empty)` runs after every
  // redraw (to update hints and buttons), `onStrokeEnd()` when a stroke is finished.
  function attach(canvas, { width, height, onChange = () => {}, onStrokeEnd = () => {} }) {
    const ctx = canvas.getContext("2d");
    const strokes = [];       // each stroke: [[x, y], ...] in logical units
    let current = null;       // the stroke being drawn, with its pointer id

    function redraw() {
      const list = current ? [...strokes, current.points] : strokes;
      paint(ctx, canvas.width / width, list);
      onChange(list.length === 0);
    }

    // Pointer position in logical units, measured inside the canvas's border.
    function toLogical(e) {
      const r = canvas.getBoundingClientRect();
      const x = ((e.clientX - r.left - canvas.clientLeft) / canvas.clientWidth) * width;
      const y = ((e.clientY - r.top - canvas.clientTop) / canvas.clientHeight) * height;
      const round = (v, hi) => Math.round(Math.min(hi, Math.max(0, v)) * 10) / 10;
      return [round(x, width), round(y, height)];
    }

    canvas.addEventListener("pointerdown", (e) => {
      if (current || (e.pointerType === "mouse" && e.button !== 0)) return;
      e.preventDefault();
      canvas.focus({ preventScroll: true });
      canvas.setPointerCapture(e.pointerId);
      current = { id: e.pointerId, points: [toLogical(e)] };
      redraw();
    });

    canvas.addEventListener("pointermove", (e) => {
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
      if (e.type === "pointerup") onStrokeEnd();
    }
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());

    return {
      get empty() { return strokes.length === 0; },
      redraw,
      undo() { strokes.pop(); redraw(); },
      clear() { strokes.length = 0; current = null; redraw(); },
      // Match the backing store to the element's size on screen, at the screen's density.
      resize() {
        const px = Math.round((canvas.clientWidth || width) * (window.devicePixelRatio || 1));
        if (canvas.width !== px) {
          canvas.width = px;
          canvas.height = Math.round(px * height / width);
        }
        redraw();
      },
      // The drawing as sent: a width x height PNG whatever the screen's pixel density.
      blob() {
        const off = document.createElement("canvas");
        off.width = width;
        off.height = height;
        paint(off.getContext("2d"), 1, strokes);
        return new Promise((resolve) => off.toBlob(resolve, "image/png"));
      },
    };
  }

  return { attach };
})();
