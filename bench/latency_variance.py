#!/usr/bin/python3
"""Where latency variance comes from: perceiver.cpp and ONNX Runtime, each as N separate processes, under a few
run-time settings, with the hypervisor's steal time and the page faults of every process.

  /usr/bin/python3 bench/latency_variance.py [--processes 5] [--iters 10] [--precision fp32,int8]
                                             [--variants default,unpinned,passive] [--no-ort]
                                             [--background-load N]

Each round runs every (engine, variant) once, in the same order, as a fresh process (engines alternate, so a
noisy stretch of the machine hits them alike). Per engine and variant it prints: min / median / max over the
processes of their median latency (the figure the README reports), the spread inside a process (max / min of
its iterations, median over processes), the steal time of the machine during its runs (share of all CPU time
that the hypervisor gave to other guests, from /proc/stat), and for perceiver.cpp the minor page faults and
involuntary context switches (preemptions) of the timed iterations and the CPU's peak rate measured right after
them (`perceiver bench --json`; a register-only loop, so it moves with the clock frequency and with the other
guests sharing the core, not with memory).

--background-load N runs N busy-loop processes (`yes > /dev/null`) beside every measured process, as another
tenant of the machine would: with N = 1 on 2 cores, one of the engine's two threads shares its core.

Variants (OpenMP settings of perceiver.cpp; ORT has its own thread pool and runs only as `default`):
  default   the library's defaults (each thread of a pass pinned to a CPU of its own when the threads are as
            many as the CPUs, src/kernels/thread_pinning.h; libgomp spins, then sleeps, at barriers)
  unpinned  PERCEIVER_PIN_THREADS=0: the scheduler places and moves the threads
  bind      OMP_PROC_BIND=close OMP_PLACES=cores: libgomp pins thread i to core i
  passive   OMP_WAIT_POLICY=passive: threads sleep at once at a barrier instead of spinning

Needs what bench/side_by_side.py needs (it creates the full-size random checkpoint and its ONNX export in
bench/.work/ on its first run; run it once first) and a Release build of perceiver.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = {
    "default": {},
    "unpinned": {"PERCEIVER_PIN_THREADS": "0"},
    "bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "passive": {"OMP_WAIT_POLICY": "passive"},
}


def cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7], sum(fields[:8])  # user nice system idle iowait irq softirq steal


def run(cmd, env, background_load):
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(background_load)]
    try:
        steal0, total0 = cpu_ticks()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        steal1, total1 = cpu_ticks()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["steal"] = (steal1 - steal0) / max(1, total1 - total0)
    return res


def peak(runs):
    values = [x.get("peak_gflops_per_s") for x in runs]
    if None in values:
        return "-"
    return f"{min(values):.0f}-{max(values):.0f} ({runs[0].get('peak_instruction', '?')})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32,int8", help="perceiver.cpp precisions, comma-separated")
    ap.add_argument("--variants", default="default,unpinned,passive", help=", ".join(VARIANTS))
    ap.add_argument("--no-ort", action="store_true", help="perceiver.cpp only")
    ap.add_argument("--background-load", type=int, default=0, help="busy-loop processes beside each run")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    ap.add_argument("--perceiver", default=os.environ.get("PERCEIVER_BIN", os.path.join(ROOT, "build", "bin", "perceiver")))
    args = ap.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: '{v}' is not one of {', '.join(VARIANTS)}")
    model_dir = os.path.join(args.workdir, "vision-perceiver-conv-random")
    onnx_path = os.path.join(args.workdir, "perceiver-conv-b1.onnx")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        sys.exit(f"{model_dir}: no checkpoint; run bench/side_by_side.py once first")
    if not args.no_ort and not os.path.exists(onnx_path):
        sys.exit(f"{onnx_path}: no ONNX export; run bench/side_by_side.py once first (or pass --no-ort)")

    t, n = str(args.threads), str(args.iters)
    engines = {}
    for p in args.precision.split(","):
        for v in variants:
            env = dict(os.environ, **VARIANTS[v])
            engines[f"perceiver.cpp {p}, {v}"] = (
                [args.perceiver, "bench", "--model", model_dir, "--threads", t, "--precision", p, "--iters", n,
                 "--warmup", "2", "--json"], env)
    if not args.no_ort:
        engines["ONNX Runtime fp32, default"] = (
            ["node", os.path.join(HERE, "ort_bench.js"), onnx_path, "--threads", t, "--iters", n, "--warmup", "2"],
            dict(os.environ))
    results = {k: [] for k in engines}
    for r in range(args.processes):
        for name, (cmd, env) in engines.items():
            res = run(cmd, env, args.background_load)
            results[name].append(res)
            times = res["times_ms"]
            print(f"process {r + 1}/{args.processes} {name}: median {statistics.median(times):.0f} ms, "
                  f"min {min(times):.0f}, max {max(times):.0f}, steal {100 * res['steal']:.1f}%", flush=True)

    cpu = next((x["cpu"] for v in results.values() for x in v if "cpu" in x), "unknown CPU")
    print()
    print(f"{cpu}, {args.threads} threads, batch 1, {args.processes} processes x {args.iters} iterations each"
          + (f", {args.background_load} busy-loop process(es) beside each" if args.background_load else ""))
    print()
    print("| engine, setting | min / median / max of the process medians (ms) | spread in a process (max/min) "
          "| steal | minor faults | preemptions | CPU peak GFLOP/s (instruction) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        medians = [statistics.median(x["times_ms"]) for x in runs]
        spread = statistics.median(max(x["times_ms"]) / min(x["times_ms"]) for x in runs)
        steal = statistics.median(x["steal"] for x in runs)
        def counter(key):
            values = [x.get(key) for x in runs]
            return "-" if None in values else f"{statistics.median(values):.0f}"
        print(f"| {name} | {min(medians):.0f} / {statistics.median(medians):.0f} / {max(medians):.0f} "
              f"| {spread:.3f} | {100 * steal:.1f}% | {counter('minor_faults_timed')} "
              f"| {counter('involuntary_switches_timed')} | {peak(runs)} |")


if __name__ == "__main__":
    main()
