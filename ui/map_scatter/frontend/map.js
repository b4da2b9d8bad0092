// The Map page's scatter (ui/map_scatter): every point of a trait map drawn with WebGL in one
// draw call; pan, zoom, hover, click, lasso and box selection done here, over the typed arrays,
// so a million points never become a million JavaScript objects. Speaks Streamlit's component
// protocol (version 1) directly: no build step, nothing loaded from elsewhere.
"use strict";

const send = (type, data) => window.parent.postMessage({isStreamlitMessage: true, type, ...data}, "*");
const setValue = value => send("streamlit:setComponentValue", {value, dataType: "json"});

const stage = document.getElementById("stage");
const glCanvas = document.getElementById("gl");
const overlay = document.getElementById("overlay");
const ink = overlay.getContext("2d");
const tip = document.getElementById("tip");
const gl = glCanvas.getContext("webgl", {antialias: false, alpha: false, depth: false, stencil: false});

// What the frame holds: the points (coordinates, labels, groups) and one colouring, each named
// by the token Python gave it.
const held = {points: null, colors: null};
let n = 0, xy = null, labels = null, labelStart = null, groups = null, groupNames = [];
let codes = null, palette = [];
let bounds = null, view = null;
let selected = null;            // the selected rows (Int32Array) while a selection exists
let hits = [], query = null;   // rows of a search result
let mode = "pan";
let requested = null, needs = 0;
let lastHeight = 0;
let report = false;             // the next frame draws new points or colours: say so when it is finished
// What Python reads (the component's value): the pick, on which points, and any data asked for.
const state = {token: null, selection: null, clicked: null, need: null};

// -- WebGL ----------------------------------------------------------------------------------
function shader(type, source) {
  const s = gl.createShader(type);
  gl.shaderSource(s, source);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
const program = gl.createProgram();
gl.attachShader(program, shader(gl.VERTEX_SHADER, `
  attribute vec2 a_xy; attribute vec4 a_rgba;
  uniform vec2 u_lo, u_span; uniform float u_size;
  varying vec4 v_rgba;
  void main() {
    gl_Position = vec4((a_xy - u_lo) / u_span * 2.0 - 1.0, 0.0, 1.0);
    gl_PointSize = u_size;
    v_rgba = a_rgba;
  }`));
gl.attachShader(program, shader(gl.FRAGMENT_SHADER, `
  precision mediump float;
  varying vec4 v_rgba; uniform float u_round;
  void main() {
    if (u_round > 0.5 && length(gl_PointCoord - 0.5) > 0.5) discard;
    gl_FragColor = v_rgba;
  }`));
gl.linkProgram(program);
gl.useProgram(program);
const at = name => gl.getAttribLocation(program, name);
const uni = name => gl.getUniformLocation(program, name);
const xyBuffer = gl.createBuffer(), rgbaBuffer = gl.createBuffer();
gl.bindBuffer(gl.ARRAY_BUFFER, xyBuffer);
gl.enableVertexAttribArray(at("a_xy"));
gl.vertexAttribPointer(at("a_xy"), 2, gl.FLOAT, false, 0, 0);
gl.bindBuffer(gl.ARRAY_BUFFER, rgbaBuffer);
gl.enableVertexAttribArray(at("a_rgba"));
gl.vertexAttribPointer(at("a_rgba"), 4, gl.UNSIGNED_BYTE, true, 0, 0);

// The bytes Streamlit hands over may start anywhere in the message's buffer: copy when a typed
// view of them would be misaligned.
function typed(bytes, Type) {
  const own = bytes.byteOffset % Type.BYTES_PER_ELEMENT === 0 ? bytes : bytes.slice();
  return new Type(own.buffer, own.byteOffset, own.byteLength / Type.BYTES_PER_ELEMENT);
}

function pointSize() {
  const css = n > 200000 ? 2 : n > 20000 ? 3 : n > 2000 ? 5 : 8;
  return css * window.devicePixelRatio;
}

// Colours written again when they change: n bytes x 4.
function uploadColors() {
  if (!n || !codes) return;
  const rgba = new Uint8Array(4 * n), lut = new Uint8Array(4 * 256);
  palette.forEach((c, i) => { lut[4 * i] = c[0]; lut[4 * i + 1] = c[1]; lut[4 * i + 2] = c[2]; });
  for (let i = 0; i < n; i++) {
    const k = 4 * codes[i];
    rgba[4 * i] = lut[k]; rgba[4 * i + 1] = lut[k + 1]; rgba[4 * i + 2] = lut[k + 2];
    rgba[4 * i + 3] = 255;
  }
  gl.bindBuffer(gl.ARRAY_BUFFER, rgbaBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, rgba, gl.STATIC_DRAW);
}

// The points are drawn again only when the view, the data or the colours changed: in software
// WebGL a million points take most of a second, so a lasso being dragged or a hover redraws
// the overlay alone.
let frame = 0, pointsStale = true;
const redraw = (points = true) => {
  pointsStale ||= points;
  if (!frame) frame = requestAnimationFrame(draw);
};

function fitCanvas(canvas, w, h) {
  const dpr = window.devicePixelRatio;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
}

function draw() {
  frame = 0;
  const w = stage.clientWidth, h = stage.clientHeight;
  fitCanvas(overlay, w, h);
  if (pointsStale) drawPoints(w, h);
  drawOverlay();
}

function drawPoints(w, h) {
  pointsStale = false;
  fitCanvas(glCanvas, w, h);
  gl.viewport(0, 0, glCanvas.width, glCanvas.height);
  gl.clearColor(1, 1, 1, 1);
  gl.clear(gl.COLOR_BUFFER_BIT);
  if (n && codes && view) {
    gl.uniform2f(uni("u_lo"), view.x0, view.y0);
    gl.uniform2f(uni("u_span"), view.x1 - view.x0, view.y1 - view.y0);
    gl.uniform1f(uni("u_size"), pointSize());
    gl.uniform1f(uni("u_round"), pointSize() >= 4 ? 1 : 0);
    gl.drawArrays(gl.POINTS, 0, n);
    glCanvas.dataset.view = JSON.stringify([view.x0, view.x1, view.y0, view.y1]);
    if (report) {
      // Waiting for the frame blocks this thread, which the page around it shares: only when
      // new data was drawn (data-drawn tells a reader every point is on the screen), not on
      // every pan, zoom or selection.
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
      document.body.dataset.drawn = String(n);
      report = false;
    }
  }
}

// -- view: data <-> screen (CSS pixels of the stage) -----------------------------------------
function fitView() {
  if (!bounds) return;
  const mx = (bounds.x1 - bounds.x0) * 0.03 || 1, my = (bounds.y1 - bounds.y0) * 0.03 || 1;
  view = {x0: bounds.x0 - mx, x1: bounds.x1 + mx, y0: bounds.y0 - my, y1: bounds.y1 + my};
}
const toScreenX = x => (x - view.x0) / (view.x1 - view.x0) * stage.clientWidth;
const toScreenY = y => (view.y1 - y) / (view.y1 - view.y0) * stage.clientHeight;
const toDataX = px => view.x0 + px / stage.clientWidth * (view.x1 - view.x0);
const toDataY = py => view.y1 - py / stage.clientHeight * (view.y1 - view.y0);

// The point nearest a screen position, within `radius` pixels; -1 when none.
function nearest(px, py, radius = 10) {
  if (!n || !view) return -1;
  const x0 = toDataX(px - radius), x1 = toDataX(px + radius), y0 = toDataY(py + radius), y1 = toDataY(py - radius);
  let best = -1, bestD = radius * radius;
  for (let i = 0; i < n; i++) {
    const x = xy[2 * i], y = xy[2 * i + 1];
    if (x < x0 || x > x1 || y < y0 || y > y1) continue;
    const dx = toScreenX(x) - px, dy = toScreenY(y) - py, d = dx * dx + dy * dy;
    if (d <= bestD) { bestD = d; best = i; }
  }
  return best;
}

function label(row) {
  if (!labelStart) {  // where each line starts, found on the first hover rather than before the first frame
    labelStart = new Uint32Array(n + 1);
    for (let i = 0, k = 1; i < labels.length && k <= n; i++) if (labels[i] === 10) labelStart[k++] = i + 1;
    labelStart[n] = labels.length + 1;
  }
  const text = new TextDecoder().decode(labels.subarray(labelStart[row], labelStart[row + 1] - 1));
  return {catalogNumber: text, group: groupNames[groups[row]] ?? ""};
}

// -- the overlay: highlights, the picked point, the hovered one, a drag in progress -----------
let hovered = -1, drag = null;
function ring(row, radius, stroke, fill) {
  ink.beginPath();
  ink.arc(toScreenX(xy[2 * row]), toScreenY(xy[2 * row + 1]), radius, 0, 2 * Math.PI);
  if (fill) { ink.fillStyle = fill; ink.fill(); }
  ink.lineWidth = 2;
  ink.strokeStyle = stroke;
  ink.stroke();
}
// A selection is shown on the overlay: a white veil over the map with the selected points
// stamped on it in their colours, written pixel by pixel (milliseconds for tens of thousands)
// and kept until the view, the selection or the colours change. Redrawing a million points in
// software WebGL instead would hold up the page's answer to the selection by a second.
let veil = null, veilKey = "", veilSeq = 0;
function selectionLayer() {
  const w = overlay.width, h = overlay.height;
  const key = [veilSeq, held.colors, w, h, view.x0, view.x1, view.y0, view.y1].join(" ");
  if (veil && veilKey === key) return veil;
  const image = new ImageData(w, h), pixels = new Uint32Array(image.data.buffer);
  pixels.fill(0xbfffffff);  // white at 75% (little-endian RGBA)
  const size = Math.max(1, Math.round(pointSize())), r = (size - 1) / 2, stamp = [];
  for (let dy = 0; dy < size; dy++) for (let dx = 0; dx < size; dx++) {
    if (size < 4 || (dx - r) ** 2 + (dy - r) ** 2 <= (r + 0.5) ** 2) stamp.push([dx - Math.floor(r), dy - Math.floor(r)]);
  }
  const lut = new Uint32Array(256);
  palette.forEach((c, i) => { lut[i] = (0xff << 24 | c[2] << 16 | c[1] << 8 | c[0]) >>> 0; });
  const sx = w / (view.x1 - view.x0), sy = h / (view.y1 - view.y0);
  for (const row of selected) {
    const cx = Math.round((xy[2 * row] - view.x0) * sx), cy = Math.round((view.y1 - xy[2 * row + 1]) * sy);
    if (cx < -size || cy < -size || cx > w + size || cy > h + size) continue;
    const color = lut[codes[row]];
    for (const [dx, dy] of stamp) {
      const x = cx + dx, y = cy + dy;
      if (x >= 0 && y >= 0 && x < w && y < h) pixels[y * w + x] = color;
    }
  }
  veil = image;
  veilKey = key;
  return image;
}

function drawOverlay() {
  const dpr = window.devicePixelRatio;
  ink.setTransform(1, 0, 0, 1, 0, 0);
  ink.clearRect(0, 0, overlay.width, overlay.height);
  if (!n || !view) return;
  if (selected && codes) ink.putImageData(selectionLayer(), 0, 0);
  ink.setTransform(dpr, 0, 0, dpr, 0, 0);
  for (const row of hits) if (row < n) ring(row, 7, "black");
  if (query !== null && query < n) ring(query, 10, "black", "gold");
  if (state.clicked !== null && state.clicked < n) ring(state.clicked, 8, "#d62728");
  if (hovered >= 0) ring(hovered, 6, "#31333f");
  if (drag && drag.mode !== "pan" && drag.path.length > 1) {
    ink.beginPath();
    if (drag.mode === "box") {
      const [a, b] = [drag.path[0], drag.path[drag.path.length - 1]];
      ink.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else {
      drag.path.forEach(([x, y], i) => (i ? ink.lineTo(x, y) : ink.moveTo(x, y)));
      ink.closePath();
    }
    ink.fillStyle = "rgba(49, 51, 63, 0.08)";
    ink.fill();
    ink.setLineDash([4, 3]);
    ink.lineWidth = 1;
    ink.strokeStyle = "#31333f";
    ink.stroke();
    ink.setLineDash([]);
  }
}

// -- selection -----------------------------------------------------------------------------
function insidePolygon(poly) {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [x, y] of poly) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  const mask = new Uint8Array(n), m = poly.length;
  for (let i = 0; i < n; i++) {
    const x = xy[2 * i], y = xy[2 * i + 1];
    if (x < x0 || x > x1 || y < y0 || y > y1) continue;
    let inside = false;
    for (let a = 0, b = m - 1; a < m; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > y) !== (yb > y) && x < (xb - xa) * (y - ya) / (yb - ya) + xa) inside = !inside;
    }
    mask[i] = inside ? 1 : 0;
  }
  return mask;
}
function insideBox(xa, xb, ya, yb) {
  const [x0, x1, y0, y1] = [Math.min(xa, xb), Math.max(xa, xb), Math.min(ya, yb), Math.max(ya, yb)];
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const x = xy[2 * i], y = xy[2 * i + 1];
    mask[i] = x >= x0 && x <= x1 && y >= y0 && y <= y1 ? 1 : 0;
  }
  return mask;
}
function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
// A selection as Python reads it: row numbers (int32) when few, else a bit per point.
function packed(mask, rows) {
  if (rows.length * 32 <= n) return {rows: base64(new Uint8Array(rows.buffer))};
  const bits = new Uint8Array(Math.ceil(n / 8));
  for (let i = 0; i < n; i++) if (mask[i]) bits[i >> 3] |= 1 << (i & 7);
  return {bitmap: base64(bits)};
}
function pick(selectionMode, mask) {
  let count = 0;
  for (let i = 0; i < n; i++) count += mask[i];
  const rows = new Int32Array(count);
  for (let i = 0, k = 0; i < n; i++) if (mask[i]) rows[k++] = i;
  state.token = held.points;
  state.selection = {mode: selectionMode, count, ...packed(mask, rows)};
  state.clicked = null;
  setValue(state);
  showSelection(rows);
}
function showSelection(rows) {
  selected = rows;
  veilSeq++;
  redraw(false);
}
function clearPick() {
  if (state.selection === null && state.clicked === null) return;
  state.selection = null;
  state.clicked = null;
  setValue(state);
  showSelection(null);
}

// -- mouse -----------------------------------------------------------------------------------
const local = e => { const r = overlay.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
overlay.addEventListener("mousedown", e => {
  if (e.button !== 0 || !view) return;
  const p = local(e);
  drag = {mode, path: [p], view: {...view}, moved: false};
  e.preventDefault();
});
window.addEventListener("mousemove", e => {
  const p = local(e);
  if (!drag) { hover(p); return; }
  const start = drag.path[0];
  if (Math.abs(p[0] - start[0]) + Math.abs(p[1] - start[1]) > 3) drag.moved = true;
  if (drag.mode === "pan") {
    const dx = (p[0] - start[0]) / stage.clientWidth * (drag.view.x1 - drag.view.x0);
    const dy = (p[1] - start[1]) / stage.clientHeight * (drag.view.y1 - drag.view.y0);
    view = {x0: drag.view.x0 - dx, x1: drag.view.x1 - dx, y0: drag.view.y0 + dy, y1: drag.view.y1 + dy};
  } else if (drag.mode === "box") {
    drag.path = [start, p];
  } else {
    drag.path.push(p);
  }
  redraw(drag.mode === "pan");
});
window.addEventListener("mouseup", e => {
  if (!drag) return;
  const done = drag;
  drag = null;
  const p = local(e);
  if (!done.moved) {
    const row = nearest(p[0], p[1]);
    if (row < 0) { clearPick(); return; }
    state.token = held.points;
    state.selection = null;
    state.clicked = row;
    setValue(state);
    if (selected) showSelection(null);
  } else if (done.mode === "lasso" && done.path.length > 2) {
    pick("lasso", insidePolygon(done.path.map(([x, y]) => [toDataX(x), toDataY(y)])));
  } else if (done.mode === "box") {
    const [a, b] = [done.path[0], p];
    pick("box", insideBox(toDataX(a[0]), toDataX(b[0]), toDataY(a[1]), toDataY(b[1])));
  }
  redraw(false);
});
let hoverAt = null;
function hover(p) {
  const first = hoverAt === null;
  hoverAt = p;
  if (first) requestAnimationFrame(() => {
    const [px, py] = hoverAt;
    hoverAt = null;
    const inStage = px >= 0 && py >= 0 && px < stage.clientWidth && py < stage.clientHeight;
    const row = inStage ? nearest(px, py) : -1;
    if (row !== hovered) { hovered = row; redraw(false); }
    if (row < 0) { tip.hidden = true; return; }
    const {catalogNumber, group} = label(row);
    tip.textContent = group ? `${catalogNumber} · ${group}` : catalogNumber;
    tip.hidden = false;
    tip.style.left = `${Math.min(px + 12, stage.clientWidth - tip.offsetWidth - 2)}px`;
    tip.style.top = `${Math.max(py - 28, 0)}px`;
  });
}
overlay.addEventListener("mouseleave", () => { tip.hidden = true; hovered = -1; redraw(false); });
overlay.addEventListener("wheel", e => {
  if (!view) return;
  e.preventDefault();
  const [px, py] = local(e), x = toDataX(px), y = toDataY(py);
  const f = Math.pow(1.2, e.deltaY / 100);
  view = {x0: x - (x - view.x0) * f, x1: x + (view.x1 - x) * f, y0: y - (y - view.y0) * f, y1: y + (view.y1 - y) * f};
  redraw();
}, {passive: false});
overlay.addEventListener("dblclick", () => { fitView(); redraw(); });
document.querySelectorAll("#bar button[data-mode]").forEach(button => button.addEventListener("click", () => {
  mode = button.dataset.mode;
  document.querySelectorAll("#bar button[data-mode]").forEach(b => b.classList.toggle("on", b === button));
  overlay.className = mode;
}));
document.getElementById("reset").addEventListener("click", () => { fitView(); redraw(); });
document.getElementById("clear").addEventListener("click", clearPick);

// -- legend ----------------------------------------------------------------------------------
function showLegend(name, legend, numeric) {
  const box = document.getElementById("legend");
  box.replaceChildren();
  const head = document.createElement("div");
  head.textContent = name;
  head.style.fontWeight = "600";
  box.append(head);
  const rgb = c => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  if (numeric && legend.length === 2) {
    const ramp = document.createElement("div");
    ramp.className = "ramp";
    ramp.style.background = `linear-gradient(to right, ${palette.slice(0, 255).filter((_, i) => i % 16 === 0 || i === 254).map(rgb).join(", ")})`;
    const ends = document.createElement("div");
    ends.className = "row";
    ends.style.justifyContent = "space-between";
    ends.style.width = "160px";
    for (const [text] of legend) { const s = document.createElement("span"); s.textContent = text; ends.append(s); }
    box.append(ramp, ends);
    return;
  }
  for (const [text, color] of legend) {
    const row = document.createElement("div"), swatch = document.createElement("span"), words = document.createElement("span");
    row.className = "row";
    swatch.className = "swatch";
    swatch.style.background = rgb(color);
    words.textContent = text;
    row.append(swatch, words);
    box.append(row);
  }
}

// -- Streamlit -------------------------------------------------------------------------------
function takePoints(args) {
  held.points = args.points_token;
  xy = typed(args.xy, Float32Array);
  n = xy.length / 2;
  labels = args.labels;
  labelStart = null;
  groups = typed(args.groups, args.group_width === 4 ? Uint32Array : Uint16Array);
  groupNames = args.group_names;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = xy[2 * i], y = xy[2 * i + 1];
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  bounds = n ? {x0, x1, y0, y1} : null;
  fitView();
  gl.bindBuffer(gl.ARRAY_BUFFER, xyBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
  selected = null;
  hovered = -1;
  state.selection = null;
  state.clicked = null;
}

function render(args) {
  document.getElementById("title").textContent = args.title || "";
  const height = args.height || 640;
  if (height !== lastHeight) {
    lastHeight = height;
    stage.style.height = `${height - 34}px`;
    send("streamlit:setFrameHeight", {height});
  }
  // The same arguments come again when the page resizes the frame: data already held is kept,
  // with the view and the selection on it.
  const newPoints = args.xy && args.points_token !== held.points;
  const newColors = args.codes && (newPoints || args.colors_token !== held.colors);
  if (newPoints) takePoints(args);
  palette = args.palette;
  if (newColors) { held.colors = args.colors_token; codes = args.codes; }
  showLegend(args.color_name, args.legend, args.numeric);
  hits = args.hits || [];
  query = args.query ?? null;
  if (held.points !== args.points_token || held.colors !== args.colors_token) {
    // This frame lacks what the tokens name (it was created after they were sent): ask once.
    const pair = `${args.points_token} ${args.colors_token}`;
    if (requested !== pair) {
      requested = pair;
      // unique across frames: a frame re-created later must not repeat an ask already answered
      state.need = `${pair} ${Date.now()}-${++needs}-${Math.random().toString(36).slice(2)}`;
      setValue(state);
    }
    return;
  }
  requested = null;
  if (newPoints || newColors) {
    uploadColors();
    report = true;
    redraw();
  } else {
    redraw(false);  // highlights only
  }
}

window.addEventListener("message", e => { if (e.data && e.data.type === "streamlit:render") render(e.data.args); });
// A resize (the page around grew a scrollbar when the gallery appeared) redraws once it settles:
// the page shares this thread, and its new content comes first.
let resizing = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(redraw, 300);
});
send("streamlit:componentReady", {apiVersion: 1});
