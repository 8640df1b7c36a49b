#!/usr/bin/python3
"""Load benchmark of `perceiver serve`: N concurrent clients, each sending Open Inference Protocol v2 infer
requests (one base64 image each, JSON) until a request count or a time limit is reached; reports requests/s,
p50/p99 latency, errors and the mean batch size from /metrics. Runs each configuration on a fresh server, with
dynamic batching (--max-batch 8) and without (--max-batch 1).

  /usr/bin/python3 bench/serve_load.py                       # Fashion-MNIST model + full-size random conv model
  /usr/bin/python3 bench/serve_load.py --only fashion --clients 64 --requests 2000 --seconds 30

Standard library + nothing else; the server binary is build/bin/perceiver (--cli to change).
"""
import argparse
import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEIVER_SHARED_DIR", ROOT.parent / "shared"))


def start_server(cli, model_args, extra):
    proc = subprocess.Popen([cli, "serve", "--port", "0", *model_args, *extra], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"ready at http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise RuntimeError("server did not start:\n" + "".join(lines))


def metric_sum(text, name, model):
    m = re.search(rf'^{name}\{{model="{model}"\}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path)
    data = conn.getresponse().read()
    conn.close()
    return data.decode()


def run_load(port, model, body, clients, max_requests, seconds):
    latencies, errors = [], []
    lock = threading.Lock()
    issued = [0]
    deadline = time.time() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)  # keep-alive connection per client
        while True:
            with lock:
                if issued[0] >= max_requests or time.time() >= deadline:
                    break
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except Exception as e:  # noqa: BLE001
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                resp = e
            dt = time.perf_counter() - t0
            with lock:
                (latencies if ok else errors).append(dt if ok else getattr(resp, "status", repr(resp)))
        conn.close()

    before = get(port, "/metrics")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = get(port, "/metrics")
    passes = metric_sum(after, "perceiver_batch_size_count", model) - metric_sum(before, "perceiver_batch_size_count", model)
    images = metric_sum(after, "perceiver_batch_size_sum", model) - metric_sum(before, "perceiver_batch_size_sum", model)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return {"requests": len(latencies), "errors": len(errors), "seconds": wall,
            "rps": len(latencies) / wall, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "mean_batch": images / passes if passes else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=str(ROOT / "build" / "bin" / "perceiver"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3000, help="most requests per run (fashion)")
    ap.add_argument("--seconds", type=float, default=20, help="most seconds per run (fashion)")
    ap.add_argument("--full-clients", type=int, default=16, help="concurrent clients (full-size model)")
    ap.add_argument("--full-requests", type=int, default=200, help="most requests per run (full-size model)")
    ap.add_argument("--full-seconds", type=float, default=60, help="most seconds per run (full-size model)")
    ap.add_argument("--threads", type=int, default=0, help="serve --threads (0: all cores)")
    ap.add_argument("--only", choices=["fashion", "full"], help="run one model only")
    ap.add_argument("--json", action="store_true", help="one JSON line per run on stdout")
    args = ap.parse_args()

    fashion_png = sorted((SHARED / "models" / "fashion-mnist-conv" / "expected" / "images").glob("*.png"))[0]
    cat = ROOT / "samples" / "cat.jpg"
    setups = [
        ("fashion", "fashion-mnist-conv (643k params, 56x56)", ["--model", f"fashion={SHARED / 'models' / 'fashion-mnist-conv'}"],
         fashion_png, args.requests, args.seconds, args.clients),
        ("full", "full-size conv, random weights (224x224)", ["--random-model", "full"], cat,
         args.full_requests, args.full_seconds, args.full_clients),
    ]
    rows = []
    for name, label, model_args, image, max_requests, seconds, clients in setups:
        if args.only and args.only != name:
            continue
        body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "data": [base64.b64encode(image.read_bytes()).decode()]}]}).encode()
        for max_batch in (8, 1):
            extra = ["--max-batch", str(max_batch), "--max-queue", str(max(256, clients * 2)),
                     "--request-timeout-s", "600"]
            if args.threads:
                extra += ["--threads", str(args.threads)]
            proc, port = start_server(args.cli, model_args, extra)
            try:
                run_load(port, name, body, min(clients, 8), min(16, max_requests), 10)  # warm-up
                r = run_load(port, name, body, clients, max_requests, seconds)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
            r.update(model=label, max_batch=max_batch, clients=clients)
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{label:55s} --max-batch {max_batch}: {r['requests']} ok, {r['errors']} errors in "
                      f"{r['seconds']:.1f} s: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms, mean batch {r['mean_batch']:.2f}", flush=True)
    if not args.json:
        print("\n| model | --max-batch | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['max_batch']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                  f"{r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.2f} |")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
