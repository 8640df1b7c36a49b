#!/usr/bin/python3
"""How int8 (and bf16) accuracy depends on how sharp the model's attention is.

  /usr/bin/python3 bench/int8_sharpness.py [--scales 1,2,3,4] [--images 4] [--threads 2] [--perceiver PATH]
                                           [--workdir bench/.work/sharpness]

A full-size conv checkpoint with HF's initialisation (bench/perceiver_twin.py checkpoint: weights N(0, 0.02))
attends almost uniformly: its self-attention scores have a small standard deviation (printed). Scaling every
query and key weight by s multiplies the scores by about s^2, and at s = 4 softmax is close to an argmax. For each s this script writes that checkpoint, takes the reference logits from the
PyTorch twin in float64, and compares against them:
  - perceiver.cpp --precision fp32, bf16 and int8 (build/bin/perceiver classify --pixels),
  - the PyTorch twin in float32 (how well conditioned the checkpoint is: float32 rounding alone),
  - an ideal W8A8 model: the twin in float64 with every linear layer's weights rounded to int8 per output channel
    and its inputs to uint8 per row (perceiver.cpp's int8 scheme, with no kernel error at all).
Prints a markdown table of the smallest cosine(logits) over the images and the top-1 agreement. The images are
the photos of ../shared/vectors/preprocess, preprocessed by `perceiver preprocess`.

Needs /usr/bin/python3 with python3-torch and a Release build of perceiver. About 2 minutes per scale on 2 cores.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("PERCEIVER_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
sys.path.insert(0, HERE)
import perceiver_twin as twin  # noqa: E402


def cosine_and_top1(got, want):
    cos = [float(np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w))) for g, w in zip(got, want)]
    top1 = sum(int(g.argmax() == w.argmax()) for g, w in zip(got, want))
    return min(cos), top1


def quantize_weight(w):  # int8 per output channel, symmetric, scale max|w| / 127
    s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / 127
    return (w / s).round().clamp(-127, 127) * s


def quantize_rows(x):  # uint8 per row, asymmetric, the range widened to hold 0
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=1e-30)
    z = (-lo / s).round()
    return ((x / s).round() + z).clamp(0, 255).sub(z) * s


def self_attention_score_std(model_dir, pixels):
    """The standard deviation of the scores that enter the self-attention softmaxes (512 keys), over all layers."""
    softmax, seen = torch.softmax, []

    def recording_softmax(x, dim):
        if x.shape[-1] == 512:
            seen.append(float(x.std()))
        return softmax(x, dim=dim)

    torch.softmax = recording_softmax
    try:
        twin_logits(model_dir, pixels[:1], torch.float32)
    finally:
        torch.softmax = softmax
    return float(np.mean(seen))


def twin_logits(model_dir, pixels, dtype, w8a8=False):
    model = twin.load_model(model_dir, tuple(pixels.shape[2:]))
    for name in dir(model):
        v = getattr(model, name)
        if torch.is_tensor(v) and v.is_floating_point():
            setattr(model, name, v.to(dtype))
    linear, cache = F.linear, {}

    def w8a8_linear(x, w, b=None):
        if id(w) not in cache:
            cache[id(w)] = quantize_weight(w)
        return linear(quantize_rows(x), cache[id(w)], b)

    if w8a8:
        F.linear = w8a8_linear
    try:
        with torch.inference_mode():
            return model(torch.from_numpy(pixels).to(dtype)).double().numpy()
    finally:
        F.linear = linear


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,2,3,4", help="query/key weight scales, comma-separated")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perceiver", default=os.environ.get("PERCEIVER_BIN", os.path.join(ROOT, "build", "bin",
                                                                                          "perceiver")))
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work", "sharpness"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    work = lambda name: os.path.join(args.workdir, name)  # noqa: E731

    base = work("qk1")
    if not os.path.exists(os.path.join(base, "model.safetensors")):
        twin.make_checkpoint(base, seed=0)
    photos = sorted(p for p in glob.glob(os.path.join(SHARED, "vectors", "preprocess", "*"))
                    if p.endswith((".jpg", ".png")) and ".decoded_rgb." not in p)[:args.images]
    with open(os.path.join(base, "preprocessor_config.json"), "w") as f:  # PerceiverImageProcessor's defaults
        json.dump({"do_center_crop": True, "crop_size": 256, "do_resize": True, "size": {"height": 224,
                   "width": 224}, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                   "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, f)
    planes = []
    for i, photo in enumerate(photos):
        out = work(f"pixels{i}.npy")
        subprocess.run([args.perceiver, "preprocess", "--model", base, photo, "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        planes.append(np.load(out))
    pixels = np.concatenate(planes).astype(np.float32)
    np.save(work("pixels.npy"), pixels)
    print(f"{len(photos)} images: {', '.join(os.path.basename(p) for p in photos)}", flush=True)

    state = twin.load_safetensors(os.path.join(base, "model.safetensors"))
    config = json.load(open(os.path.join(base, "config.json")))
    rows = []
    for s in [float(x) for x in args.scales.split(",")]:
        d = work(f"qk{s:g}")
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            os.makedirs(d, exist_ok=True)
            scaled = {k: (v * s if (".query." in k or ".key." in k) and k.endswith(".weight") else v)
                      for k, v in state.items()}
            twin.save_safetensors(os.path.join(d, "model.safetensors"), scaled)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
        want = twin_logits(d, pixels, torch.float64)
        row = {"scale": s, "score_std": self_attention_score_std(d, pixels)}
        for precision in ("fp32", "bf16", "int8"):
            out = work(f"logits-{s:g}-{precision}.npy")
            subprocess.run([args.perceiver, "classify", "--model", d, "--pixels", work("pixels.npy"), "--logits-out",
                            out, "--precision", precision, "--threads", str(args.threads)], check=True,
                           stdout=subprocess.DEVNULL)
            row[precision] = cosine_and_top1(np.load(out), want)
        row["twin fp32"] = cosine_and_top1(twin_logits(d, pixels, torch.float32), want)
        row["ideal W8A8"] = cosine_and_top1(twin_logits(d, pixels, torch.float64, w8a8=True), want)
        rows.append(row)
        print(f"scale {s:g}: " + ", ".join(f"{k} cos {v[0]:.5f} top-1 {v[1]}/{len(pixels)}" for k, v in row.items()
                                          if isinstance(v, tuple)), flush=True)

    cols = ["fp32", "bf16", "int8", "ideal W8A8", "twin fp32"]
    print("\nmin cosine(logits) against the twin in float64, top-1 agreement in brackets\n")
    print("| q/k scale | self-attention score std | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c][0]:.4f} ({r[c][1]}/{len(pixels)})" for c in cols]
        print(f"| {r['scale']:g} | {r['score_std']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
