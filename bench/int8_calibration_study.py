#!/usr/bin/python3
"""Static activation calibration vs our dynamic per-row int8 quantisation: a simulation on real data.

  nice -n 10 /usr/bin/python3 bench/int8_calibration_study.py [--attention bf16|fp32] [--limit N] [--batch 500]

Question (the issue: "optional static calibration only if it measurably improves accuracy or speed over dynamic
quantization"): would static activation scales beat what `--precision int8` does? The trained Fashion-MNIST model
(../shared/models/fashion-mnist-conv, whose expected/ holds Hugging Face's fp32 logits for all 10,000 test images)
runs in PyTorch through bench/perceiver_twin.py's weights, LayerNorm and conv stem, with every linear layer that
perceiver.cpp runs in int8 replaced by a simulation of src/kernels/int8_gemm.h:

  weights      per output channel, symmetric: Wq = clamp(nearbyint(W * (127 / max|W_n|)), -127, 127),
               w_scale = max|W_n| / 127 (float32, round half to even as std::nearbyint);
  activations  unsigned 8 bit with a zero point: the range [min(0, lo), max(0, hi)] onto 0..255, scale =
               (hi - lo) / 255, zero = clamp(nearbyint(-lo / scale), 0, 255), Xq = clamp(nearbyint(x / scale)
               + zero, 0, 255) (x * (1 / scale) in float32, as row_quant / quantize_value do);
  sum          (Xq - zero) Wq^T, exact (every partial sum is an integer below 2^24, so float32 GEMMs are exact);
  epilogue     float(acc) * (x_scale * w_scale) + bias in float32 (the engine fuses it into one fma), then GELU
               (exact erf here, Abramowitz & Stegun's to 1.5e-7 there), then + residual.

The data flow is the engine's, not the twin's where they differ: the two constant-query one-head cross-attentions
(encoder over the image tokens, decoder over the latents) are folded (query and key products in fp32, attention
over LN(kv) itself, the int8 value projection applied to P LN(kv)); self-attention Q/K/V are one stacked GEMM;
the conv stem, LayerNorms, softmax, residual stream stay fp32; attention runs in bf16 (Q, K, V and the
unnormalised probabilities rounded to bf16, fp32 sums), as perceiver.cpp does on AVX-512 CPUs (--attention fp32:
as on other CPUs).

Only the activation ranges (lo, hi) differ between the schemes:
  dynamic per row      each row (token) of each linear's input, at run time: what perceiver.cpp ships;
  dynamic per tensor   all rows of one image's input to the linear, at run time;
  static min/max       one range per linear call site (a shared self-attention layer applied in two blocks has
                       one per application), the min and max over N training images (first N of a fixed
                       random permutation, seed 0), N = 100 and 1000;
  static percentile    the same, with the 0.01th and 99.99th percentiles of all those values instead.
Calibration runs the model with fp32 linears (and the same attention). Every scheme is then evaluated on all
10,000 test images against HF's fp32 logits and the labels. First the unquantised twin itself is checked
against HF's logits. Prints markdown tables. About 3-5 minutes on one core.

Run it with Debian's /usr/bin/python3 (python3-torch, python3-numpy, python3-pil).
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import perceiver_twin as twin  # noqa: E402

DATASET = "/usr/share/datasets/fashion-mnist"
SHARED = os.environ.get("PERCEIVER_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
MODEL = os.path.join(SHARED, "models", "fashion-mnist-conv")
PERCENTILE = 99.99


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------------------------


def read_idx(path, rank):
    """A gzip-compressed IDX array of unsigned bytes with `rank` dimensions."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != rank:
        sys.exit(f"{path}: not an IDX file of unsigned bytes with {rank} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * d:8 + 4 * d], "big") for d in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def pixel_values(gray, cfg):
    """[N, 28, 28] uint8 -> [N, 3, H, W] float32 as the manifest's preprocessing steps say: PIL 'L' -> RGB,
    Pillow bicubic resize on uint8, * rescale_factor in float64 cast to float32, (x - mean) / std in float32."""
    assert cfg["do_resize"] and cfg["do_rescale"] and cfg["do_normalize"] and not cfg.get("do_center_crop")
    h, w = cfg["size"]["height"], cfg["size"]["width"]
    scaled = (np.arange(256, dtype=np.float64) * cfg["rescale_factor"]).astype(np.float32)  # by byte value
    lut = np.stack([(scaled - np.float32(cfg["image_mean"][c])) / np.float32(cfg["image_std"][c]) for c in range(3)])
    out = np.empty((len(gray), 3, h, w), np.float32)
    for i in range(len(gray)):
        rgb = np.asarray(Image.fromarray(gray[i]).convert("RGB").resize((w, h), resample=cfg["resample"]))
        for c in range(3):
            out[i, c] = lut[c][rgb[:, :, c]]
    return out


# --- the int8 arithmetic of src/kernels/int8_gemm.h ---------------------------------------------------------------


def act_params(lo, hi):
    """row_quant(): (scale, inverse, zero) float32 tensors from the ranges lo, hi (any shape, any sign)."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / 255.0
    ok = (scale > 0) & torch.isfinite(scale)
    scale = torch.where(ok, scale, torch.ones_like(scale))
    inverse = torch.where(ok, 1.0 / scale, torch.ones_like(scale))
    zero = torch.where(ok, torch.clamp(torch.round(-lo * inverse), 0.0, 255.0), torch.zeros_like(scale))
    return scale, inverse, zero


class Int8Linear:
    """One packed int8 linear layer (several weight matrices stacked by rows, as Int8Weights does)."""

    def __init__(self, weights, biases):
        w = torch.cat(weights).float()
        amax = w.abs().amax(dim=1)
        ok = (amax > 0) & torch.isfinite(amax)
        inv = torch.where(ok, 127.0 / amax, torch.zeros_like(amax))
        self.wq_t = torch.clamp(torch.round(w * inv[:, None]), -127.0, 127.0).t().contiguous()  # [K, N]
        self.w_scale = torch.where(ok, amax / 127.0, torch.zeros_like(amax))
        self.bias = torch.cat(biases).float()

    def __call__(self, x, lo, hi, gelu, residual):
        """x [B, R, K]; lo, hi broadcastable to [B, R, 1] (the activation ranges)."""
        scale, inverse, zero = act_params(lo, hi)
        xq = torch.clamp(torch.round(x * inverse) + zero, 0.0, 255.0) - zero  # Xq - zero, integers
        acc = torch.matmul(xq, self.wq_t)  # exact integers in float32
        y = torch.addcmul(self.bias, acc, scale * self.w_scale)  # the engine's fma, here rounded twice
        if gelu:
            y = F.gelu(y)
        return y if residual is None else y + residual


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)  # round to nearest even


# --- calibration ------------------------------------------------------------------------------------------------


class Observer:
    """Per call site: min and max, and the k smallest / largest values (k = 0.01 % of all the values seen over
    `images` images) for the percentile ranges."""

    def __init__(self, images):
        self.images = images
        self.sites = {}

    def __call__(self, site, x):
        s = self.sites.get(site)
        if s is None:
            k = max(1, int(self.images * x[0].numel() * (100.0 - PERCENTILE) / 100.0))
            s = self.sites[site] = {"k": k, "lo": float("inf"), "hi": float("-inf"),
                                    "bottom": torch.empty(0), "top": torch.empty(0)}
        flat = x.reshape(-1)
        s["lo"] = min(s["lo"], float(flat.min()))
        s["hi"] = max(s["hi"], float(flat.max()))
        top = torch.cat([s["top"], flat])
        bottom = torch.cat([s["bottom"], flat])
        s["top"] = torch.topk(top, min(s["k"], top.numel()), largest=True).values
        s["bottom"] = torch.topk(bottom, min(s["k"], bottom.numel()), largest=False).values

    def ranges(self, kind):
        if kind == "minmax":
            return {site: (s["lo"], s["hi"]) for site, s in self.sites.items()}
        return {site: (float(s["bottom"].max()), float(s["top"].min())) for site, s in self.sites.items()}


# --- the model, with perceiver.cpp's data flow -------------------------------------------------------------------


class EngineSim(twin.PerceiverTwin):
    """The twin's weights, stem and LayerNorms; linears as int8 (per self.scheme) or fp32 (scheme None)."""

    def __init__(self, config, state, image_hw, attention):
        super().__init__(config, state, image_hw)
        if self.arch != twin.ARCH_CONV:
            raise ValueError("this study runs the conv model")
        self.attention = attention
        self.scheme, self.static, self.observer = None, None, None
        self.fp32 = {}   # name -> (W [N, K], b [N])
        self.int8 = {}   # name -> Int8Linear
        self.folded = {}  # cross-attention prefix -> constant folded queries [nq, kv_dim]

        def add(name, parts):
            ws = [self.w(p + ".weight") for p in parts]
            bs = [self.w(p + ".bias") for p in parts]
            self.fp32[name] = (torch.cat(ws), torch.cat(bs))
            self.int8[name] = Int8Linear(ws, bs)

        def layer(prefix, cross):
            a = prefix + "attention."
            if cross:
                add(a + "value", [a + "self.value"])
            else:
                add(a + "qkv", [a + "self.query", a + "self.key", a + "self.value"])
            add(a + "output", [a + "output.dense"])
            add(prefix + "mlp1", [prefix + "mlp.dense1"])
            add(prefix + "mlp2", [prefix + "mlp.dense2"])

        enc = "perceiver.encoder.cross_attention."
        dec = "perceiver.decoder.decoder.decoding_cross_attention."
        layer(enc, True)
        for i in range(self.num_self):
            layer(f"perceiver.encoder.self_attends.{i}.", False)
        layer(dec, True)
        add("final", ["perceiver.decoder.decoder.final_layer"])
        self.fold(enc, self.w("perceiver.embeddings.latents"))
        self.fold(dec, self.w("perceiver.decoder.decoder.output_position_encodings.position_embeddings"))

    def fold(self, prefix, queries):
        """fold_constant_queries: (LN(q) Wq^T + bq) Wk in double, stored as float; Wk's bias drops out."""
        a = prefix + "attention.self."
        qn = self.ln(queries, a + "layernorm1").double()
        q = qn @ self.w(a + "query.weight").double().t() + self.w(a + "query.bias").double()
        self.folded[prefix] = (q @ self.w(a + "key.weight").double()).float()

    def lin(self, site, name, x, gelu=False, residual=None):
        if self.observer is not None:
            self.observer(site, x)
        if self.scheme is None:
            w, b = self.fp32[name]
            y = F.linear(x, w, b)
            if gelu:
                y = F.gelu(y)
            return y if residual is None else y + residual
        if self.scheme == "row":
            lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        elif self.scheme == "tensor":
            lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
        else:
            lo, hi = (torch.tensor(v, dtype=torch.float32) for v in self.static[site])
        return self.int8[name](x, lo, hi, gelu, residual)

    def attend(self, q, k, v, heads, scale):
        """q [B, nq, Cq], k [B, nk, Cq], v [B, nk, Cv] -> [B, nq, Cv]."""
        b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        v_is_k = v is k
        q = q.reshape(b, nq, heads, -1).transpose(1, 2)
        k = k.reshape(b, nk, heads, -1).transpose(1, 2)
        v = k if v_is_k else v.reshape(b, nk, heads, -1).transpose(1, 2)
        if self.attention == "bf16":  # the fast backend's bf16 path: bf16 operands, fp32 softmax and sums
            kb = bf16(k)
            vb = kb if v is k else bf16(v)  # the folded layers attend over LN(kv) itself
            s = torch.matmul(bf16(q), kb.transpose(-1, -2)) * scale
            e = torch.exp(s - s.amax(dim=-1, keepdim=True))
            out = torch.matmul(bf16(e), vb) * (1.0 / e.sum(dim=-1, keepdim=True))
        else:
            out = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1), v)
        return out.transpose(1, 2).reshape(b, nq, -1)

    def scale_of(self, prefix, heads):
        return 1.0 / float(np.sqrt(self.dims[prefix + "attention.self.query.weight"][0] // heads))

    def folded_attention(self, prefix, kv, batch):
        """P LN(kv) of a folded constant-query one-head cross-attention: what its value projection reads."""
        kvn = self.ln(kv, prefix + "attention.self.layernorm2")
        q = self.folded[prefix][None].expand(batch, -1, -1)
        return self.attend(q, kvn, kvn, 1, self.scale_of(prefix, 1))

    def sim_layer(self, prefix, site, x, heads, kv=None, weighted=None):
        a = prefix + "attention."
        if kv is not None:
            weighted = self.folded_attention(prefix, kv, x.shape[0])
        if weighted is not None:  # folded cross-attention: context = (P LN(kv)) Wv^T + bv
            ctx = self.lin(site + ".value", a + "value", weighted)
        else:
            xn = self.ln(x, a + "self.layernorm1")
            qkv = self.lin(site + ".qkv", a + "qkv", xn)
            qk, cv = self.dims[a + "self.query.weight"][0], self.dims[a + "self.value.weight"][0]
            ctx = self.attend(qkv[..., :qk], qkv[..., qk:2 * qk], qkv[..., 2 * qk:2 * qk + cv], heads,
                              self.scale_of(prefix, heads))
        h = self.lin(site + ".output", a + "output", ctx, residual=x)
        hn = self.ln(h, prefix + "layernorm")
        hidden = self.lin(site + ".mlp1", prefix + "mlp1", hn, gelu=True)
        return self.lin(site + ".mlp2", prefix + "mlp2", hidden, residual=h)

    def encoder_attention(self, pixels):
        """Everything before the first int8 linear, the same in every scheme: stem, LN, encoder attention."""
        return self.folded_attention("perceiver.encoder.cross_attention.", self.preprocess(pixels), pixels.shape[0])

    def finish(self, weighted):
        """The rest of the forward pass from encoder_attention()'s output: the logits [B, labels]."""
        b = weighted.shape[0]
        lat = self.w("perceiver.embeddings.latents")[None].expand(b, -1, -1)
        z = self.sim_layer("perceiver.encoder.cross_attention.", "enc.cross", lat, self.cross_heads,
                           weighted=weighted)
        for blk in range(self.num_blocks):
            for i in range(self.num_self):
                z = self.sim_layer(f"perceiver.encoder.self_attends.{i}.", f"enc.block{blk}.self{i}", z,
                                   self.self_heads)
        d = "perceiver.decoder.decoder."
        query = self.w(d + "output_position_encodings.position_embeddings")[None].expand(b, -1, -1)
        out = self.sim_layer(d + "decoding_cross_attention.", "dec.cross", query, 1, kv=z)
        return self.lin("dec.final", "final", out)[:, 0]

    def forward(self, pixels):
        return self.finish(self.encoder_attention(pixels))


# --- running and scoring -------------------------------------------------------------------------------------------


def run(model, pixels, batch):
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            out.append(model(torch.from_numpy(pixels[i:i + batch])).numpy())
    return np.concatenate(out)


def score(logits, hf_logits, hf_pred, labels):
    pred = logits.argmax(axis=1)
    cos = (logits * hf_logits).sum(1) / np.sqrt((logits * logits).sum(1) * (hf_logits * hf_logits).sum(1))
    return {"agree": int((pred == hf_pred).sum()), "correct": int((pred == labels).sum()), "n": len(labels),
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "rms_err": float(np.sqrt(((logits - hf_logits) ** 2).mean())),
            "max_err": float(np.abs(logits - hf_logits).max()), "agrees": pred == hf_pred}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--attention", choices=("bf16", "fp32"), default="bf16",
                    help="attention arithmetic of the int8 model (bf16: perceiver.cpp on AVX-512 CPUs)")
    ap.add_argument("--calibration", default="100,1000", help="calibration set sizes (training images)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--limit", type=int, default=10000, help="test images (all 10,000 by default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    cfg = json.load(open(os.path.join(args.model, "preprocessor_config.json")))
    config = json.load(open(os.path.join(args.model, "config.json")))
    hf_logits = np.load(os.path.join(args.model, "expected", "test_logits.npy"))[:args.limit]
    hf_pred = np.load(os.path.join(args.model, "expected", "test_predictions.npy"))[:args.limit]
    hf_accuracy = json.load(open(os.path.join(args.model, "expected", "manifest.json")))["test_accuracy"]
    labels = read_idx(os.path.join(DATASET, "t10k-labels-idx1-ubyte.gz"), 1)[:args.limit].astype(np.int64)
    test = pixel_values(read_idx(os.path.join(DATASET, "t10k-images-idx3-ubyte.gz"), 3)[:args.limit], cfg)
    sizes = [int(s) for s in args.calibration.split(",") if s]
    order = np.random.default_rng(0).permutation(60000)[:max(sizes, default=0)]
    train = pixel_values(read_idx(os.path.join(DATASET, "train-images-idx3-ubyte.gz"), 3)[order], cfg)
    hw = (cfg["size"]["height"], cfg["size"]["width"])
    log(f"preprocessed {len(test)} test and {len(train)} training images in {time.perf_counter() - t_start:.1f} s")

    state = twin.load_safetensors(os.path.join(args.model, "model.safetensors"))
    sim = EngineSim(config, state, hw, args.attention).eval()

    # Calibration: the model with fp32 linears (and the evaluation's attention) on the training images.
    calib_info = {}
    for n in sizes:
        t = time.perf_counter()
        sim.scheme, sim.observer = None, Observer(n)
        run(sim, train[:n], args.batch)
        obs, sim.observer = sim.observer, None
        calib_info[n] = {kind: obs.ranges(kind) for kind in ("minmax", "percentile")}
        log(f"calibration on {n} training images: {time.perf_counter() - t:.1f} s, {len(obs.sites)} call sites")

    schemes = []  # (name, calibration, scheme, static ranges)
    if args.attention != "fp32":
        schemes.append((f"no int8 (fp32 linears), {args.attention} attention", "-", None, None))
    schemes.append(("dynamic per row (perceiver.cpp)", "-", "row", None))
    schemes.append(("dynamic per tensor (per image)", "-", "tensor", None))
    for n in sizes:
        schemes.append(("static per tensor, min/max", f"{n} train images", "static", calib_info[n]["minmax"]))
        schemes.append((f"static per tensor, {PERCENTILE}th percentile", f"{n} train images", "static",
                        calib_info[n]["percentile"]))

    # The unquantised twin, and every scheme, batch by batch (the part before the first int8 linear once).
    plain = twin.load_model(args.model, hw)
    twin_logits, logits = [], [[] for _ in schemes]
    seconds = [0.0] * (len(schemes) + 2)
    with torch.inference_mode():
        for i in range(0, len(test), args.batch):
            x = torch.from_numpy(test[i:i + args.batch])
            t = time.perf_counter()
            twin_logits.append(plain(x).numpy())
            t1 = time.perf_counter()
            sim.attention = args.attention
            weighted = sim.encoder_attention(x)
            t2 = time.perf_counter()
            seconds[0] += t1 - t
            seconds[1] += t2 - t1
            for j, (_, _, scheme, static) in enumerate(schemes):
                t = time.perf_counter()
                sim.scheme, sim.static = scheme, static
                logits[j].append(sim.finish(weighted).numpy())
                seconds[j + 2] += time.perf_counter() - t
            log(f"{i + len(x)} / {len(test)} test images")
        # The engine's data flow with fp32 linears and fp32 attention must equal the twin.
        n_check = min(len(test), args.batch)
        sim.attention, sim.scheme = "fp32", None
        flow_err = float(np.abs(sim(torch.from_numpy(test[:n_check])).numpy() - twin_logits[0][:n_check]).max())
    log("seconds: twin %.1f, encoder attention %.1f, schemes " % tuple(seconds[:2]) +
        ", ".join(f"{x:.1f}" for x in seconds[2:]))
    twin_score = score(np.concatenate(twin_logits), hf_logits, hf_pred, labels)
    rows = [(name, calib, score(np.concatenate(lg), hf_logits, hf_pred, labels))
            for (name, calib, _, _), lg in zip(schemes, logits)]
    shipped = next(s["agrees"] for (_, _, scheme, _), (_, _, s) in zip(schemes, rows) if scheme == "row")
    for _, _, s in rows:  # paired with the shipped scheme: images it gets right that per row does not, and back
        s["gained"] = int((s["agrees"] & ~shipped).sum())
        s["lost"] = int((~s["agrees"] & shipped).sum())
    twin_score.pop("agrees")

    # --- report ---
    n = len(test)
    print(f"## Fashion-MNIST int8 activation schemes (simulated), {n} test images\n")
    print(f"Unquantised twin (bench/perceiver_twin.py) vs HF fp32 logits: max |diff| {twin_score['max_err']:.3g}, "
          f"top-1 agreement {twin_score['agree']}/{n}, accuracy {100 * twin_score['correct'] / n:.2f} % "
          f"(HF {100 * hf_accuracy:.2f} % on all 10,000). Engine data flow (folded cross-attention), fp32: "
          f"max |diff| to the twin {flow_err:.3g} on {n_check} images.\n")
    print(f"Attention of the int8 rows: {args.attention}. Weights int8 per output channel in every row.\n")
    print("| activation scheme | calibration | top-1 agreement with HF fp32 | vs per row: gained / lost | "
          f"accuracy (HF {100 * hf_accuracy:.2f} %) | mean cosine to HF | min cosine | RMS logit error | "
          "max abs logit error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, calib, s in rows:
        print(f"| {name} | {calib} | {s['agree']} / {s['n']} ({100 * s['agree'] / s['n']:.2f} %) | "
              f"+{s['gained']} / -{s['lost']} | {100 * s['correct'] / s['n']:.2f} % | {s['cos_mean']:.6f} | "
              f"{s['cos_min']:.5f} | {s['rms_err']:.4f} | {s['max_err']:.3f} |")
    print("\n(gained / lost: test images whose top-1 agrees with HF under this scheme but not under dynamic per "
          "row, and the reverse.)")
    # How much the static ranges clip: the dynamic per-row range never clips.
    if sizes:
        big = max(sizes)
        print(f"\nStatic ranges from {big} training images, per call site (lo, hi): min/max | percentile\n")
        print("| call site | min/max | percentile |")
        print("| --- | --- | --- |")
        mm, pc = calib_info[big]["minmax"], calib_info[big]["percentile"]
        for site in mm:
            print(f"| {site} | {mm[site][0]:.3g}, {mm[site][1]:.3g} | {pc[site][0]:.3g}, {pc[site][1]:.3g} |")
    log(f"total {time.perf_counter() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"twin_vs_hf": twin_score, "flow_vs_twin_max_err": flow_err, "attention": args.attention,
                       "rows": [{"scheme": a, "calibration": c, **{k: v for k, v in s.items() if k != "agrees"}}
                                for a, c, s in rows],
                       "static_ranges": {str(k): v for k, v in calib_info.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
