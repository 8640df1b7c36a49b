#!/usr/bin/python3
"""int8 accuracy on real data: perceiver.cpp --precision int8 against ONNX Runtime's dynamic int8 quantisation.

  /usr/bin/python3 bench/int8_accuracy.py [--threads 2] [--perceiver PATH] [--workdir bench/.work/fashion-mnist-int8]

All 10,000 Fashion-MNIST test images (Debian's dataset-fashion-mnist) through the trained model in
../shared/models/fashion-mnist-conv, whose expected/ folder holds Hugging Face's fp32 logits for every test image.
Engines: ONNX Runtime fp32 (the PyTorch twin, bench/perceiver_twin.py, exported to ONNX), ONNX Runtime int8
(that graph through bench/ort_quantize.py: per tensor, ORT's default, and --per-channel), perceiver.cpp fp32 and
int8 (build/bin/perceiver classify --pixels). Every engine gets the same float32 pixels: the images are
preprocessed here as the C++ test does (gray -> RGB, preprocessor_config.json: Pillow's bicubic resize to 56x56,
uint8 * rescale_factor in float64 cast to float32, (x - mean) / std in float32), checked bit for bit against
`perceiver preprocess` on the 16 PNG test images of expected/images. Prints a markdown table: top-1 agreement
with HF fp32, accuracy against the labels (and HF's), the logits' cosine with HF's and the largest logit error.

Needs /usr/bin/python3 with python3-torch, python3-onnx, python3-pil; node with onnxruntime-node in bench/
(cd bench && ONNXRUNTIME_NODE_INSTALL=skip npm install). About a minute on 2 cores.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATASET = "/usr/share/datasets/fashion-mnist"
SHARED = os.environ.get("PERCEIVER_SHARED_DIR") or os.path.join(ROOT, "..", "shared")  # as the C++ tests
MODEL = os.path.join(SHARED, "models", "fashion-mnist-conv")
BATCH = 500  # images per forward pass, as in the C++ test


def read_idx(path, rank):
    """A gzip-compressed IDX file of unsigned bytes with `rank` dimensions."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\0\0\x08" or data[3] != rank:
        sys.exit(f"{path}: not an IDX file of unsigned bytes with {rank} dimensions")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def preprocess(gray, cfg):
    """[N, 28, 28] uint8 -> float32 [N, 3, H, W], as perceiver.cpp and HF's PerceiverImageProcessor do."""
    if cfg.get("do_center_crop") or not (cfg["do_resize"] and cfg["do_rescale"] and cfg["do_normalize"]):
        sys.exit("int8_accuracy: only resize + rescale + normalise (no centre crop) is implemented")
    h, w = cfg["size"]["height"], cfg["size"]["width"]
    levels = (np.arange(256, dtype=np.float64) * cfg["rescale_factor"]).astype(np.float32)
    table = np.stack([(levels - np.float32(m)) / np.float32(s) for m, s in zip(cfg["image_mean"], cfg["image_std"])])
    out = np.empty((len(gray), 3, h, w), np.float32)
    for i, img in enumerate(gray):
        rgb = np.asarray(Image.fromarray(img, "L").convert("RGB").resize((w, h), resample=cfg["resample"]))
        for c in range(3):
            out[i, c] = table[c][rgb[:, :, c]]
    return out


def check_against_perceiver(perceiver, model_dir, pixels, workdir):
    """Our pixels of the expected/images PNGs (test images) must equal `perceiver preprocess` of those files."""
    manifest = json.load(open(os.path.join(model_dir, "expected", "manifest.json")))
    for entry in manifest["images"]:
        out = os.path.join(workdir, "preprocessed.npy")
        png = os.path.join(model_dir, "expected", entry["file"])
        subprocess.run([perceiver, "preprocess", "--model", model_dir, png, "--out", out], check=True)
        theirs = np.load(out)[0]
        if not np.array_equal(theirs, pixels[entry["test_index"]]):
            sys.exit(f"preprocessing differs from perceiver's on {entry['file']}: max |diff| "
                     f"{np.abs(theirs - pixels[entry['test_index']]).max():.3g}")
    print(f"preprocessing: identical to `perceiver preprocess` on the {len(manifest['images'])} PNG test images")


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perceiver", default=os.environ.get("PERCEIVER_BIN") or os.path.join(ROOT, "build", "bin",
                                                                                            "perceiver"))
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work", "fashion-mnist-int8"))
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    work = lambda name: os.path.join(args.workdir, name)  # noqa: E731
    t = str(args.threads)

    images = read_idx(os.path.join(DATASET, "t10k-images-idx3-ubyte.gz"), 3)
    labels = read_idx(os.path.join(DATASET, "t10k-labels-idx1-ubyte.gz"), 1)
    cfg = json.load(open(os.path.join(args.model, "preprocessor_config.json")))
    pixels = preprocess(images, cfg)
    check_against_perceiver(args.perceiver, args.model, pixels, args.workdir)
    np.save(work("pixels.npy"), pixels)  # [10000, 3, 56, 56] float32, 376 MB

    sys.path.insert(0, HERE)
    import perceiver_twin  # torch: imported only here
    perceiver_twin.export_onnx(args.model, work("fp32.onnx"), BATCH, tuple(pixels.shape[2:]))
    quantize = [sys.executable, os.path.join(HERE, "ort_quantize.py"), work("fp32.onnx")]
    subprocess.run(quantize + [work("int8.onnx")], check=True)
    subprocess.run(quantize + [work("int8-per-channel.onnx"), "--per-channel"], check=True)

    pixels_npy = work("pixels.npy")

    def ort(graph, out):
        return ["node", os.path.join(HERE, "ort_bench.js"), work(graph), "--threads", t, "--batch", str(BATCH),
                "--inputs", pixels_npy, "--logits-out", out]

    def ours(precision, out):
        return [args.perceiver, "classify", "--model", args.model, "--pixels", pixels_npy, "--batch-size", str(BATCH),
                "--threads", t, "--top-k", "1", "-q", "--precision", precision, "--logits-out", out]

    engines = [  # name, the command that writes the logits of all images to the file it is given, its argument
        ("ONNX Runtime fp32", ort, "fp32.onnx"),
        ("ONNX Runtime int8 (dynamic, per tensor)", ort, "int8.onnx"),
        ("ONNX Runtime int8 (dynamic, per channel)", ort, "int8-per-channel.onnx"),
        ("perceiver.cpp fp32", ours, "fp32"),
        ("perceiver.cpp int8", ours, "int8"),
    ]

    expected = os.path.join(args.model, "expected")
    hf = np.load(os.path.join(expected, "test_logits.npy")).astype(np.float64)
    hf_pred = np.load(os.path.join(expected, "test_predictions.npy"))
    hf_accuracy = (hf_pred == labels).mean()
    n = len(labels)
    rows = []
    for i, (name, command, what) in enumerate(engines):
        out = work(f"logits-{i}.npy")
        seconds = timed(command(what, out))
        got = np.load(out).astype(np.float64)
        pred = got.argmax(1)
        cos = (got * hf).sum(1) / np.sqrt((got * got).sum(1) * (hf * hf).sum(1))
        accuracy = (pred == labels).mean()
        rows.append(f"| {name} | {(pred == hf_pred).sum()} / {n} ({(pred == hf_pred).mean():.2%}) | {accuracy:.2%} "
                    f"| {100 * (accuracy - hf_accuracy):+.2f} | {cos.mean():.6f} / {cos.min():.6f} "
                    f"| {np.abs(got - hf).max():.3g} | {seconds:.1f} |")
        print(f"{name}: done in {seconds:.1f} s", flush=True)

    print()
    print(f"Fashion-MNIST test set ({n} images), fashion-mnist-conv, {args.threads} threads, batches of {BATCH}; "
          f"HF fp32 accuracy {hf_accuracy:.2%} (max |HF logit| {np.abs(hf).max():.2f})")
    print()
    print("| engine | top-1 agreement with HF fp32 | accuracy | vs HF (points) | logits cosine with HF mean / min "
          "| max abs logit error | wall s (process) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
