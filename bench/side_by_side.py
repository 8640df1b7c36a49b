#!/usr/bin/python3
"""perceiver.cpp vs ONNX Runtime vs PyTorch on the same full-size conv checkpoint, same threads, interleaved.

  /usr/bin/python3 bench/side_by_side.py [--threads 2] [--rounds 3] [--batch 1] [--precision fp32]

Steps: validate the PyTorch twin (bench/perceiver_twin.py) against ../shared/vectors; create a full-size
random-weight conv checkpoint (model.safetensors + config.json) in bench/.work/ unless present; export the twin to
ONNX (opset 14); then, per round, run ORT, perceiver.cpp, ORT, PyTorch, each as a fresh process with its own
warm-up (the machine is noisy, so the engines alternate). Prints the table and the speed ratios.

When --precision includes int8, ONNX Runtime's own dynamic int8 quantisation of the same graph
(bench/ort_quantize.py: MatMulInteger, weights int8 per tensor, activations uint8 per tensor at run time) runs
too, as "ort-int8", after perceiver.cpp in every round, with the same threads and iterations; the table gets its
row and the ratio ORT int8 / perceiver.cpp int8. Besides the median and minimum over all timed iterations, the
table gives, per engine, the number of processes and the min / median / max of the per-process medians (every
round starts fresh processes), i.e. how much the latency moves from one process to the next.

Needs: Debian's /usr/bin/python3 with python3-torch; node with onnxruntime-node installed in bench/
(cd bench && ONNXRUNTIME_NODE_INSTALL=skip npm install); a Release build of perceiver (--perceiver; default
$PERCEIVER_BIN, else build/bin/perceiver). The PyTorch process alone runs with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset: this machine's environment pins OpenBLAS (which Debian's PyTorch uses) to its Haswell
kernels, which halves it.

On other machines: --python PY (another Python with torch), --ort python (ONNX Runtime's Python package through
bench/ort_bench.py instead of node), --cpus 0,1 (pin every engine to those CPUs with taskset).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"
TWIN = os.path.join(HERE, "perceiver_twin.py")
GFLOP = 369.2  # conv model at 224x224 (Model::flops_per_image)


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_perceiver():
    """$PERCEIVER_BIN, else build/bin/perceiver (other build folders may hold other configurations)."""
    for p in (os.environ.get("PERCEIVER_BIN"), os.path.join(ROOT, "build", "bin", "perceiver")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("no perceiver binary: build it (cmake -B build && cmake --build build --target perceiver_cli), or "
             "pass --perceiver PATH / set PERCEIVER_BIN")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32",
                    help="perceiver.cpp's precision(s), comma-separated: fp32, bf16, int8 (e.g. fp32,bf16,int8)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per process (ORT, perceiver.cpp)")
    ap.add_argument("--torch-iters", type=int, default=1, help="timed iterations per PyTorch process")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    ap.add_argument("--perceiver", default=None)
    ap.add_argument("--skip-validate", action="store_true")
    ap.add_argument("--python", default=PY, help="Python with torch for the twin (default: Debian's)")
    ap.add_argument("--ort", default="node", choices=["node", "python"],
                    help="ONNX Runtime from node (onnxruntime-node) or from --python's onnxruntime package")
    ap.add_argument("--cpus", default=None, help="pin every engine to these CPUs (taskset -c LIST), e.g. 0,1")
    args = ap.parse_args()
    precisions = args.precision.split(",")
    for p in precisions:
        if p not in ("fp32", "bf16", "int8"):
            ap.error(f"--precision: '{p}' is not fp32, bf16 or int8")
    perceiver = args.perceiver or find_perceiver()
    py = args.python
    pin = ["taskset", "-c", args.cpus] if args.cpus else []
    print(f"perceiver.cpp binary: {perceiver}", flush=True)

    if not args.skip_validate:
        print("validating the PyTorch twin against ../shared/vectors ...", flush=True)
        subprocess.run([py, TWIN, "validate"], check=True)
    model_dir = os.path.join(args.workdir, "vision-perceiver-conv-random")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        subprocess.run([py, TWIN, "checkpoint", "--out", model_dir], check=True)
    onnx_path = os.path.join(args.workdir, f"perceiver-conv-b{args.batch}.onnx")
    if not os.path.exists(onnx_path):
        subprocess.run([py, TWIN, "export", "--model", model_dir, "--out", onnx_path, "--batch", str(args.batch)],
                       check=True)
    int8_path = os.path.join(args.workdir, f"perceiver-conv-b{args.batch}-ort-int8.onnx")
    if "int8" in precisions and not os.path.exists(int8_path):
        subprocess.run([py, os.path.join(HERE, "ort_quantize.py"), onnx_path, int8_path, "--check", "--threads",
                        str(args.threads)], check=True)

    torch_env = dict(os.environ)
    torch_env.pop("OPENBLAS_CORETYPE", None)
    torch_env.pop("OPENBLAS_L2_SIZE", None)
    t, b = str(args.threads), str(args.batch)
    ort_cmd = ["node", os.path.join(HERE, "ort_bench.js")] if args.ort == "node" else \
        [py, os.path.join(HERE, "ort_bench.py")]
    engines = {
        "ort": lambda: run_json(pin + ort_cmd + [onnx_path, "--threads", t, "--batch", b,
                                                "--iters", str(args.iters), "--warmup", "1"]),
        "ort-int8": lambda: run_json(pin + ort_cmd + [int8_path, "--threads", t, "--batch", b,
                                                     "--iters", str(args.iters), "--warmup", "1"]),
        **{f"ours-{p}": (lambda p=p: run_json(pin + [perceiver, "bench", "--model", model_dir, "--threads", t,
                                                     "--batch", b, "--precision", p, "--iters", str(args.iters),
                                                     "--warmup", "1", "--json"]))
           for p in precisions},
        "torch": lambda: run_json(pin + [py, TWIN, "bench", "--model", model_dir, "--threads", t, "--batch", b,
                                   "--iters", str(args.torch_iters), "--warmup", "1"], env=torch_env),
    }
    ort_int8 = ["ort-int8"] if "int8" in precisions else []
    order = ["ort"] + [f"ours-{p}" for p in precisions] + ort_int8 + ["ort", "torch"]
    times = {k: [] for k in order}
    info = {k: [] for k in order}  # one result per process
    for r in range(args.rounds):
        for name in order:
            res = engines[name]()
            times[name] += res["times_ms"]
            info[name].append(res)
            print(f"round {r + 1}/{args.rounds} {name:8s}: median {res['median_ms']:9.1f} ms per batch", flush=True)

    blas = info["torch"][0].get("blas", "unknown")
    labels = {f"ours-{p}": f"perceiver.cpp ({info[f'ours-{p}'][0]['backend']}, {p})" for p in precisions}
    labels.update({"ort": info["ort"][0]["engine"], "ort-int8": info["ort"][0]["engine"] + " (dynamic int8)",
                   "torch": info["torch"][0]["engine"] + f" (eager, twin, {blas.split(' ')[0]})"})
    ours = statistics.median(times[f"ours-{precisions[0]}"])
    print()
    print(f"Full-size conv model (random weights), 224x224, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds (ORT, ours {'/'.join(precisions)}{', ORT int8' if ort_int8 else ''}, "
          f"ORT, PyTorch)")
    print(f"PyTorch's BLAS: {blas}")
    if "openblas" not in blas and "mkl" not in blas:
        print("WARNING: PyTorch is not on an optimised BLAS (install libopenblas0-pthread); its times are not "
              "representative")
    print()
    print(f"| engine | median ms/image | min ms/image | images/s | GFLOP/s | load ms | peak RSS MB "
          f"| time vs perceiver.cpp {precisions[0]} | processes | per-process median ms/image: min / median / max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in [f"ours-{p}" for p in precisions] + ort_int8 + ["ort", "torch"]:
        med, mn = statistics.median(times[name]) / args.batch, min(times[name]) / args.batch
        load = statistics.median(x["load_ms"] for x in info[name])
        rss = max(x["peak_rss_mb"] for x in info[name])
        per_process = [x["median_ms"] / args.batch for x in info[name]]
        print(f"| {labels[name]} | {med:.0f} | {mn:.0f} | {1000 / med:.2f} | {GFLOP * 1000 / med:.0f} | {load:.0f} "
              f"| {rss:.0f} | {statistics.median(times[name]) / ours:.2f}x | {len(per_process)} "
              f"| {min(per_process):.0f} / {statistics.median(per_process):.0f} / {max(per_process):.0f} |")
    print()
    for p in precisions:
        mine = statistics.median(times[f"ours-{p}"])
        print(f"perceiver.cpp {p}: ONNX Runtime / ours {statistics.median(times['ort']) / mine:.2f}x, "
              f"PyTorch / ours {statistics.median(times['torch']) / mine:.2f}x (median latency ratios)")
    if ort_int8:
        print(f"perceiver.cpp int8 vs ONNX Runtime int8 (dynamic quantisation): ORT int8 / ours "
              f"{statistics.median(times['ort-int8']) / statistics.median(times['ours-int8']):.2f}x median, "
              f"{min(times['ort-int8']) / min(times['ours-int8']):.2f}x min")


if __name__ == "__main__":
    main()
