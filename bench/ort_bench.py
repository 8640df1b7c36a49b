#!/usr/bin/env python3
"""ONNX Runtime (Python package) side of the side-by-side benchmark, the same measurement as ort_bench.js.

  python3 bench/ort_bench.py MODEL.onnx [--threads 2] [--batch 1] [--iters 3] [--warmup 1] [--size 224]

For machines that have `pip install onnxruntime` but no node. Prints one JSON object.
"""
import argparse
import json
import resource
import statistics
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    session = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3
    pixels = np.random.default_rng(0).uniform(-2, 2, (a.batch, 3, a.size, a.size)).astype(np.float32)
    feeds = {session.get_inputs()[0].name: pixels}
    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        session.run(None, feeds)
        if i >= a.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "engine": f"onnxruntime {ort.__version__} (python)", "threads": a.threads, "batch": a.batch,
        "load_ms": load_ms, "times_ms": times, "median_ms": statistics.median(times), "min_ms": min(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
