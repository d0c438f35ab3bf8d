// e2gan browser demo: one base model + a small LoRA adapter per concept, patched and run client-side
// with onnxruntime-web (WebGPU where the browser has it, WebAssembly otherwise).
import * as ort from '/ort/ort.all.min.mjs';

ort.env.wasm.wasmPaths = '/ort/';
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
ort.env.logLevel = 'error';

const SIZE = 256;  // the exported models' fixed input: 1x3x256x256, RGB in [-1, 1]
const $ = (id) => document.getElementById(id);
const ui = {
  concept: $('concept'), prompt: $('prompt'), upload: $('upload'), camera: $('camera'), stop: $('stop'),
  strength: $('strength'), strengthValue: $('strength-value'), view: $('view'), split: $('split'),
  splitLabel: $('split-label'), measure: $('measure'), message: $('message'), status: $('status'),
  canvas: $('view-canvas'), fps: $('fps'), backend: $('backend'), download: $('download'), video: $('video'),
};

class UserError extends Error {}

const state = {
  concepts: [], base: null, sessions: new Map(), session: null, concept: null,
  input: null,          // ImageData SIZE x SIZE of the current photo or camera frame
  output: null,         // Float32Array 3 x SIZE x SIZE in [-1, 1], the model's last output
  stream: null, frames: [], lastMeasure: null, bytes: 0, baseBytes: 0,
};

// ------------------------------------------------------------------------------------------ messages

function showMessage(text, kind = 'error') {
  ui.message.textContent = text;
  ui.message.className = kind === 'error' ? 'message' : 'message info';
  ui.message.hidden = false;
}
function clearMessage() { ui.message.hidden = true; ui.message.textContent = ''; }
function status(text) { ui.status.textContent = text; }

// ------------------------------------------------------------------------------------------ loading

async function fetchBytes(url, what) {
  let res;
  try { res = await fetch(url); } catch (e) { throw new UserError(`Could not reach the demo server for ${what}: ${e.message}`); }
  if (!res.ok) {
    const err = new UserError(`${what}: ${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  const buf = await res.arrayBuffer();
  state.bytes += buf.byteLength;
  return buf;
}

// safetensors: 8-byte little-endian header length, JSON header, then the raw tensors
function parseSafetensors(buf) {
  const view = new DataView(buf);
  if (buf.byteLength < 8) throw new UserError('the adapter file is truncated');
  const n = Number(view.getBigUint64(0, true));
  if (n <= 0 || 8 + n > buf.byteLength) throw new UserError('the adapter file is not a safetensors file');
  let header;
  try { header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, n))); } catch (e) {
    throw new UserError('the adapter file has a corrupt header');
  }
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [s, e] = t.data_offsets;
    out[name] = { shape: t.shape, data: toFloat64(t.dtype, buf.slice(8 + n + s, 8 + n + e)) };
  }
  return out;
}

function toFloat64(dtype, bytes) {
  const ctor = { F32: Float32Array, F64: Float64Array, I32: Int32Array, I16: Int16Array, U8: Uint8Array,
                 I8: Int8Array, BOOL: Uint8Array }[dtype];
  if (ctor) return Float64Array.from(new ctor(bytes));
  if (dtype === 'I64') return Float64Array.from(new BigInt64Array(bytes), Number);
  if (dtype === 'F16') return Float64Array.from(new Uint16Array(bytes), halfToFloat);
  throw new UserError(`the adapter holds a ${dtype} tensor, which the demo cannot read`);
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

async function loadBase() {
  if (state.base) return state.base;
  status('Loading the base model…');
  let graph, weights, index;
  try {
    [graph, weights, index] = await Promise.all([
      fetchBytes('/models/base/model.onnx', 'the base model'),
      fetchBytes('/models/base/weights.bin', 'the base weights'),
      fetch('/models/base/index.json').then((r) => { if (!r.ok) throw new UserError('no base index'); return r.json(); }),
    ]);
  } catch (e) {
    throw new UserError('No base model is exported: run "dvc repro export_base_onnx" (or "make run") and reload.');
  }
  state.base = { graph: new Uint8Array(graph), weights, index: index.tensors, toneWindow: index.tone_window || 0 };
  state.baseBytes = graph.byteLength + weights.byteLength;
  return state.base;
}

// W' = W + scale * B @ A for every LoRA layer, the biases the adapter trained, the output curve and the concept's
// text tokens, written into a copy of the base weights; the same arithmetic as
// pipeline.deploy.artifact.apply_artifact (float64, rounded to float32 once).
function patchWeights(base, art, concept) {
  const bytes = base.weights.slice(0);
  const f32 = new Float32Array(bytes);
  const layers = Object.keys(art).filter((k) => k.endsWith('.lora_A')).map((k) => k.slice(0, -'.lora_A'.length));
  for (const layer of layers) {
    const idx = base.index[`G.${layer}.weight`];
    if (!idx) throw new UserError(`The adapter of '${concept}' changes layer ${layer}, which the base model does not have: it was made for another base. Re-export with "dvc repro export_onnx@${concept}".`);
    const A = art[`${layer}.lora_A`], B = art[`${layer}.lora_B`], scale = art[`${layer}.scale`].data[0];
    const r = A.shape[0], cols = A.data.length / r, rows = B.shape[0];
    if (rows * cols * 4 !== idx.length) throw new UserError(`The adapter of '${concept}' does not fit layer ${layer} of the base model.`);
    const off = idx.offset / 4, acc = new Float64Array(cols);
    for (let i = 0; i < rows; i++) {
      acc.fill(0);
      for (let k = 0; k < r; k++) {
        const b = B.data[i * r + k];
        if (b === 0) continue;
        const a = k * cols;
        for (let j = 0; j < cols; j++) acc[j] += b * A.data[a + j];
      }
      const w = off + i * cols;
      for (let j = 0; j < cols; j++) f32[w + j] = f32[w + j] + scale * acc[j];
    }
  }
  for (const key of Object.keys(art).filter((k) => k.endsWith('.bias'))) {
    const idx = base.index[`G.${key}`];
    if (!idx || idx.length !== art[key].data.length * 4) throw new UserError(`The adapter of '${concept}' changes bias ${key}, which does not fit the base model: it was made for another base. Re-export with "dvc repro export_onnx@${concept}".`);
    f32.set(Float32Array.from(art[key].data), idx.offset / 4);
  }
  if (art['tone.values']) {  // the concept's output curve (and outline gate), as apply_artifact writes it
    const values = art['tone.values'], idx = base.index['G.tone.values'];
    const reexport = 'set finetune_lora.tone_knots and tone_window to the concept\'s and run "dvc repro export_base_onnx"';
    if (!idx) throw new UserError(`The adapter of '${concept}' has an output curve and the base model has none: ${reexport}.`);
    if (idx.length !== values.data.length * 4) throw new UserError(`The output curve of '${concept}' (shape ${values.shape.join('×')}) does not fit the base model's: ${reexport}.`);
    const gate = art['tone.window'] ? art['tone.window'].data[0] : 0;
    if (gate !== base.toneWindow) throw new UserError(`The outline gate of '${concept}' has a ${gate}-pixel box and the base model's ${base.toneWindow}: ${reexport}.`);
    f32.set(Float32Array.from(values.data), idx.offset / 4);
  }
  const tok = base.index.tokens, mask = base.index.mask;
  if (!tok || !mask) throw new UserError('The base model has no text-token tensors; re-export it with "dvc repro -f export_base_onnx".');
  const [, L, D] = tok.shape, t = art.tokens.shape[1];
  if (t > L || art.tokens.shape[2] !== D) throw new UserError(`The prompt of '${concept}' has ${t} text tokens; the base model takes at most ${L}.`);
  f32.fill(0, tok.offset / 4, tok.offset / 4 + L * D);
  f32.set(Float32Array.from(art.tokens.data), tok.offset / 4);
  f32.fill(0, mask.offset / 4, mask.offset / 4 + L);
  f32.set(Float32Array.from(art.mask.data), mask.offset / 4);
  return new Uint8Array(bytes);
}

// WebGPU only on a real GPU adapter: a software fallback (e.g. SwiftShader) is slower than WebAssembly
let providerList = null;
async function providers() {
  if (providerList) return providerList;
  providerList = ['wasm'];
  try {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
    const fallback = adapter && (adapter.isFallbackAdapter || (adapter.info && adapter.info.isFallbackAdapter));
    if (adapter && !fallback) providerList = ['webgpu', 'wasm'];
  } catch (e) { /* no WebGPU */ }
  return providerList;
}

async function createSession(model, externalData) {
  const opts = { executionProviders: await providers(), graphOptimizationLevel: 'all' };
  if (externalData) opts.externalData = [{ path: 'weights.bin', data: externalData }];
  try {
    return await ort.InferenceSession.create(model, opts);
  } catch (e) {
    if (opts.executionProviders[0] === 'webgpu') {  // a WebGPU adapter that fails: fall back to wasm
      opts.executionProviders = ['wasm'];
      return await ort.InferenceSession.create(model, opts);
    }
    throw e;
  }
}

async function sessionFor(name) {
  if (state.sessions.has(name)) return state.sessions.get(name);
  const c = state.concepts.find((x) => x.name === name);
  const before = state.bytes;
  let session, how, kbOverride = null;
  try {
    if (c && c.adapter) {
      const base = await loadBase();
      const afterBase = state.bytes;
      status(`Loading the adapter of '${name}'…`);
      const art = parseSafetensors(await fetchBytes(`/models/${name}/adapter.safetensors`, `the adapter of '${name}'`));
      session = await createSession(base.graph, patchWeights(base, art, name));
      how = 'base + adapter';
      kbOverride = (state.bytes - afterBase) / 1024;
    } else if (c && c.model) {
      status(`Loading the model of '${name}'…`);
      session = await createSession(new Uint8Array(await fetchBytes(`/models/${name}/model.onnx`, `the model of '${name}'`)));
      how = 'full model';
    } else {
      throw new UserError(`No exported model for '${name}': run "dvc repro export_onnx@${name}" and reload the page.`);
    }
  } catch (e) {
    if (e instanceof UserError) {
      if (e.status === 404) throw new UserError(`No exported model for '${name}': run "dvc repro export_onnx@${name}" and reload the page.`);
      throw e;
    }
    throw new UserError(`The model for '${name}' could not be loaded (${e.message}). Re-export it with "dvc repro -f export_onnx@${name}".`);
  }
  const kb = kbOverride ?? (state.bytes - before) / 1024;
  const entry = { session, how, kb };
  state.sessions.set(name, entry);
  return entry;
}

// ------------------------------------------------------------------------------------------ images

const work = document.createElement('canvas');
work.width = work.height = SIZE;
const wctx = work.getContext('2d', { willReadFrequently: true });

// centre-crop `source` (image, bitmap or video) to a square and scale it to SIZE x SIZE
function toInput(source, w, h) {
  const s = Math.min(w, h);
  wctx.drawImage(source, (w - s) / 2, (h - s) / 2, s, s, 0, 0, SIZE, SIZE);
  return wctx.getImageData(0, 0, SIZE, SIZE);
}

function toTensor(img) {
  const n = SIZE * SIZE, x = new Float32Array(3 * n), d = img.data;
  for (let i = 0; i < n; i++) {
    x[i] = d[4 * i] / 127.5 - 1;
    x[n + i] = d[4 * i + 1] / 127.5 - 1;
    x[2 * n + i] = d[4 * i + 2] / 127.5 - 1;
  }
  return new ort.Tensor('float32', x, [1, 3, SIZE, SIZE]);
}

function blended(img, out, s) {
  const n = SIZE * SIZE, res = new ImageData(SIZE, SIZE), d = img.data, r = res.data;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const y = Math.min(255, Math.max(0, (out[c * n + i] + 1) * 127.5));
      r[4 * i + c] = (1 - s) * d[4 * i + c] + s * y;
    }
    r[4 * i + 3] = 255;
  }
  return res;
}

const outCanvas = document.createElement('canvas');
outCanvas.width = outCanvas.height = SIZE;
const octx = outCanvas.getContext('2d');

function render() {
  const ctx = ui.canvas.getContext('2d');
  if (!state.input) return;
  const s = Number(ui.strength.value);
  octx.putImageData(state.output ? blended(state.input, state.output, s) : state.input, 0, 0);
  wctx.putImageData(state.input, 0, 0);
  if (ui.view.value === 'side') {
    ui.canvas.width = 2 * SIZE;
    ctx.drawImage(work, 0, 0);
    ctx.drawImage(outCanvas, SIZE, 0);
  } else {
    ui.canvas.width = SIZE;
    const x = Math.round(Number(ui.split.value) * SIZE);
    ctx.drawImage(work, 0, 0, x, SIZE, 0, 0, x, SIZE);
    ctx.drawImage(outCanvas, x, 0, SIZE - x, SIZE, x, 0, SIZE - x, SIZE);
    ctx.fillStyle = 'white';
    ctx.fillRect(x - 1, 0, 2, SIZE);
  }
}

async function infer(img) {
  const entry = state.session;
  const feeds = { [entry.session.inputNames[0]]: toTensor(img) };
  const t0 = performance.now();
  const res = await entry.session.run(feeds);
  const ms = performance.now() - t0;
  state.output = res[entry.session.outputNames[0]].data;
  return ms;
}

// ------------------------------------------------------------------------------------------ actions

async function selectConcept(name) {
  clearMessage();
  state.concept = name;
  const c = state.concepts.find((x) => x.name === name);
  ui.prompt.textContent = c ? `“${c.prompt}”` : '';
  state.session = null;
  state.output = null;
  ui.measure.disabled = true;
  try {
    const entry = await sessionFor(name);
    if (state.concept !== name) return;
    state.session = entry;
    ui.backend.textContent = `${entry.how} on ${(await providers())[0]}`;
    ui.download.textContent = entry.how === 'base + adapter'
      ? `adapter ${entry.kb.toFixed(0)} kB (+ base ${(state.baseBytes / 1e6).toFixed(1)} MB, loaded once)`
      : `model ${(entry.kb / 1024).toFixed(1)} MB`;
    status(`'${name}' ready.` + (state.input ? '' : ' Upload a photo or start the camera.'));
    if (state.input && !state.stream) await editPhoto();
  } catch (e) {
    status(`'${name}' is not available.`);
    showMessage(e instanceof UserError ? e.message : `Unexpected error: ${e.message}`);
  }
}

async function editPhoto() {
  if (!state.session || !state.input) { render(); return; }
  const ms = await infer(state.input);
  render();
  ui.measure.disabled = false;
  status(`Edited with '${state.concept}' in ${ms.toFixed(1)} ms.`);
  window.e2gan.edits += 1;
}

async function onUpload(file) {
  clearMessage();
  stopCamera();
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    showMessage(`“${file.name}” is not an image this browser can decode. Choose a PNG, JPEG or WebP photo.`);
    status('No photo.');
    return;
  }
  state.input = toInput(bitmap, bitmap.width, bitmap.height);
  bitmap.close();
  state.output = null;
  if (!state.session) { render(); if (state.concept) status(`'${state.concept}' is not available.`); return; }
  await editPhoto();
}

async function startCamera() {
  clearMessage();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showMessage('This browser gives this page no camera access (it needs http://127.0.0.1 or https). Upload a photo instead.');
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    state.stream = null;
    if (e.name === 'NotAllowedError' || e.name === 'SecurityError') {
      showMessage('Camera permission was refused. Allow the camera for this page in the browser\'s site settings and press Camera again, or upload a photo instead.');
    } else if (e.name === 'NotFoundError' || e.name === 'OverconstrainedError') {
      showMessage('No camera was found. Connect one and press Camera again, or upload a photo instead.');
    } else {
      showMessage(`The camera could not be started (${e.name}: ${e.message}). Upload a photo instead.`);
    }
    return;
  }
  ui.video.srcObject = state.stream;
  await ui.video.play();
  ui.camera.disabled = true;
  ui.stop.disabled = false;
  state.frames = [];
  cameraLoop();
}

function stopCamera() {
  if (!state.stream) return;
  state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  ui.camera.disabled = false;
  ui.stop.disabled = true;
}

async function cameraLoop() {
  while (state.stream) {
    const v = ui.video;
    if (v.videoWidth && state.session) {
      const t0 = performance.now();
      state.input = toInput(v, v.videoWidth, v.videoHeight);
      await infer(state.input);
      render();
      state.frames.push(performance.now() - t0);
      if (state.frames.length > 30) state.frames.shift();
      const fps = 1000 * state.frames.length / state.frames.reduce((a, b) => a + b, 0);
      ui.fps.textContent = `${fps.toFixed(1)} frames/s (camera, ${SIZE}×${SIZE})`;
      window.e2gan.cameraFrames += 1;
    }
    await new Promise((r) => requestAnimationFrame(r));
  }
}

// frames/s of the whole per-frame path (tensor in, inference, blend, draw) on the current image
async function measure(n = 30, warmup = 3) {
  if (!state.session || !state.input) throw new UserError('Load a concept and a photo first.');
  ui.measure.disabled = true;
  status(`Measuring ${n} frames…`);
  for (let i = 0; i < warmup; i++) await infer(state.input);
  const inferMs = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    inferMs.push(await infer(state.input));
    render();
  }
  const total = performance.now() - t0;
  inferMs.sort((a, b) => a - b);
  const result = { frames: n, size: SIZE, fps: 1000 * n / total, frame_ms: total / n,
                   infer_ms_median: inferMs[Math.floor(n / 2)], infer_ms_p90: inferMs[Math.floor(0.9 * (n - 1))],
                   backend: (await providers())[0], threads: ort.env.wasm.numThreads,
                   concept: state.concept, how: state.session.how };
  ui.fps.textContent = `${result.fps.toFixed(1)} frames/s (${SIZE}×${SIZE}, inference ${result.infer_ms_median.toFixed(1)} ms)`;
  status('Measured.');
  ui.measure.disabled = false;
  state.lastMeasure = result;
  return result;
}

// ------------------------------------------------------------------------------------------ start

window.e2gan = {
  edits: 0, cameraFrames: 0,
  get output() { return state.output ? Array.from(state.output) : null; },
  get input() { return state.input ? Array.from(state.input.data) : null; },
  get lastMeasure() { return state.lastMeasure; },
  measure, selectConcept,
};

async function start() {
  let info;
  try {
    info = await (await fetch('/api/concepts')).json();
  } catch (e) {
    showMessage('The demo server is not answering: start it with "e2gan demo".');
    return;
  }
  state.concepts = info.concepts;
  if (!info.concepts.length) {
    showMessage('No concepts: add one to params.yaml and run "dvc repro".');
    return;
  }
  for (const c of info.concepts) {
    const o = document.createElement('option');
    o.value = c.name;
    o.textContent = c.adapter || c.model ? c.name : `${c.name} (not exported)`;
    ui.concept.append(o);
  }
  ui.concept.addEventListener('change', () => selectConcept(ui.concept.value));
  ui.upload.addEventListener('change', () => onUpload(ui.upload.files[0]));
  ui.camera.addEventListener('click', startCamera);
  ui.stop.addEventListener('click', stopCamera);
  ui.strength.addEventListener('input', () => { ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2); render(); });
  ui.view.addEventListener('change', () => { ui.splitLabel.hidden = ui.view.value !== 'split'; render(); });
  ui.split.addEventListener('input', render);
  ui.measure.addEventListener('click', () => measure().catch((e) => showMessage(e.message)));
  const first = info.concepts.find((c) => c.adapter || c.model) || info.concepts[0];
  ui.concept.value = first.name;
  await selectConcept(first.name);
}

window.e2gan.ready = start();
