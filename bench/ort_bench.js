// ONNX Runtime side of the side-by-side benchmark: node bench/ort_bench.js MODEL.onnx [--threads 2] [--batch 1]
// [--iters 3] [--warmup 1] [--size 224]. Prints one JSON object. Install: in bench/,
// ONNXRUNTIME_NODE_INSTALL=skip npm install   (package.json pins onnxruntime-node 1.30.0)
//
// With --inputs X.npy --logits-out Y.npy it runs the model on real inputs instead (float32 [N, ...], N a multiple of
// --batch, the model's batch size) and writes its first output, float32 [N, ...] (bench/int8_accuracy.py,
// bench/ort_quantize.py --check).
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

const STRING_OPTIONS = new Set(['inputs', 'logits-out']);

function parse(argv) {
  const a = {model: null, threads: 2, batch: 1, iters: 3, warmup: 1, size: 224, inputs: null, 'logits-out': null};
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    if (k.startsWith('--')) a[k.slice(2)] = STRING_OPTIONS.has(k.slice(2)) ? argv[++i] : Number(argv[++i]);
    else a.model = k;
  }
  if (!a.model || !a.inputs !== !a['logits-out'])
    throw new Error('usage: node ort_bench.js MODEL.onnx [--threads N] [--batch B] [--iters N] [--warmup N] ' +
                    '[--inputs X.npy --logits-out Y.npy]');
  return a;
}

function median(v) {
  const s = [...v].sort((x, y) => x - y), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

// A little-endian float32 C-order .npy: {shape, data: Float32Array}.
function readNpy(path) {
  const buf = fs.readFileSync(path);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${path}: not a .npy file`);
  const v1 = buf[6] === 1;
  const headerLen = v1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (v1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', v1 ? 10 : 12, start);
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header))
    throw new Error(`${path}: expected little-endian float32 in C order, got ${header.trim()}`);
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length));
  return {shape, data};
}

function writeNpy(path, shape, data) {
  const dims = shape.join(', ') + (shape.length === 1 ? ',' : '');
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';  // data 64-byte aligned
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  fs.writeFileSync(path, Buffer.concat([prefix, Buffer.from(header, 'latin1'),
                                        Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

// Runs the model on every batch of the inputs, writes the outputs and returns the summary.
async function runInputs(session, a) {
  const x = readNpy(a.inputs);
  const n = x.shape[0], per = x.data.length / n;
  if (n % a.batch) throw new Error(`${a.inputs}: ${n} inputs is not a multiple of --batch ${a.batch}`);
  const chunks = [];
  let outShape = null;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i += a.batch) {
    const batch = x.data.subarray(i * per, (i + a.batch) * per);
    const feed = new ort.Tensor('float32', batch, [a.batch, ...x.shape.slice(1)]);
    const y = (await session.run({[session.inputNames[0]]: feed}))[session.outputNames[0]];
    outShape = y.dims.slice(1);
    chunks.push(Float32Array.from(y.data));
  }
  const total_ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const out = new Float32Array(chunks.reduce((s, c) => s + c.length, 0));
  chunks.reduce((off, c) => (out.set(c, off), off + c.length), 0);
  writeNpy(a['logits-out'], [n, ...outShape], out);
  return {inputs: n, total_ms};
}

async function main() {
  const a = parse(process.argv.slice(2));
  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const load_ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (a.inputs) {
    const r = await runInputs(session, a);
    console.log(JSON.stringify({engine: `onnxruntime ${ort.env.versions.common}`, threads: a.threads, batch: a.batch,
                                load_ms, ...r}));
    return;
  }
  const n = a.batch * 3 * a.size * a.size;
  const data = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; ++i) {  // values in about [-2, 2]
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = (s >>> 8) * (4 / 16777216) - 2;
  }
  const feeds = {[session.inputNames[0]]: new ort.Tensor('float32', data, [a.batch, 3, a.size, a.size])};
  const times = [];
  for (let i = 0; i < a.warmup + a.iters; ++i) {
    const t = process.hrtime.bigint();
    await session.run(feeds);
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (i >= a.warmup) times.push(ms);
  }
  console.log(JSON.stringify({
    engine: `onnxruntime ${ort.env.versions.common}`, threads: a.threads, batch: a.batch, load_ms,
    times_ms: times, median_ms: median(times), min_ms: Math.min(...times),
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
