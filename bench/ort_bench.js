// ONNX Runtime side of the side-by-side benchmark: node bench/ort_bench.js MODEL.onnx [--threads 2] [--batch 1]
// [--iters 3] [--warmup 1] [--size 224]. Prints one JSON object. Install: in bench/,
// ONNXRUNTIME_NODE_INSTALL=skip npm install   (package.json pins onnxruntime-node 1.30.0)
'use strict';
const ort = require('onnxruntime-node');

function parse(argv) {
  const a = {model: null, threads: 2, batch: 1, iters: 3, warmup: 1, size: 224};
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    if (k.startsWith('--')) a[k.slice(2)] = Number(argv[++i]);
    else a.model = k;
  }
  if (!a.model) throw new Error('usage: node ort_bench.js MODEL.onnx [--threads N] [--batch B] [--iters N] [--warmup N]');
  return a;
}

function median(v) {
  const s = [...v].sort((x, y) => x - y), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
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
