#!/usr/bin/python3
"""A plain PyTorch twin of perceiver.cpp's forward pass (no `transformers`), for side-by-side benchmarks.

Loads the same config.json + model.safetensors as the C++ engine and computes the logits of the three Perceiver IO
image classifiers (conv, fourier, learned) the way Hugging Face's modeling_perceiver.py does (pre-LN layers, erf
GELU, LayerNorm eps 1e-5, query residuals, 6 shared self-attention layers applied num_blocks times).

  /usr/bin/python3 bench/perceiver_twin.py validate [--vectors ../shared/vectors]
  /usr/bin/python3 bench/perceiver_twin.py checkpoint --out DIR        # full-size random conv checkpoint
  /usr/bin/python3 bench/perceiver_twin.py export --model DIR --out model.onnx [--batch 1] [--size 224]
  /usr/bin/python3 bench/perceiver_twin.py bench --model DIR [--threads 2] [--batch 1] [--iters 3] [--warmup 1]

Run it with Debian's /usr/bin/python3 and python3-torch (apt-get install -y python3-torch).
"""
import argparse
import inspect
import json
import math
import os
import resource
import struct
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # nn.LayerNorm's default; config.layer_norm_eps is never read by HF
ARCH_CONV = "PerceiverForImageClassificationConvProcessing"
ARCH_FOURIER = "PerceiverForImageClassificationFourier"
ARCH_LEARNED = "PerceiverForImageClassificationLearned"

# --- safetensors, read and written by hand (the format is a length-prefixed JSON header plus raw bytes) -------

_DTYPES = {"F32": (torch.float32, 4), "I64": (torch.int64, 8), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, _ = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        buf = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors


def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        t = t.contiguous()
        code = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # 8-byte aligned data
    tmp = path + ".incomplete"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# --- the model -----------------------------------------------------------------------------------------------


def fourier_position_encoding(h, w, max_res, bands=64):
    """[h*w, 2 + 4*bands]: [y, x, sin(pi f y), sin(pi f x), cos(pi f y), cos(pi f x)], float32 throughout."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float32)
    xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float32)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
    freqs = torch.stack([torch.linspace(1.0, r / 2.0, bands, dtype=torch.float32) for r in max_res])  # [2, bands]
    per_pos = (pos[:, :, None] * freqs[None, :, :]).reshape(h * w, 2 * bands)
    return torch.cat([pos, torch.sin(math.pi * per_pos), torch.cos(math.pi * per_pos)], dim=-1)


class PerceiverTwin(torch.nn.Module):
    def __init__(self, config, state, image_hw=(224, 224)):
        super().__init__()
        self.arch = config["architectures"][0]
        self.num_blocks = config["num_blocks"]
        self.num_self = config["num_self_attends_per_block"]
        self.self_heads = config.get("num_self_attention_heads", 8)
        self.cross_heads = config.get("num_cross_attention_heads", 8)
        self.image_hw = tuple(image_hw)
        self.dims = {}  # tensor shapes as Python ints (static for ONNX export)
        for name, t in state.items():
            if t.dtype == torch.int64:
                continue  # BatchNorm's num_batches_tracked
            self.register_buffer(name.replace(".", "__"), t.float())
            self.dims[name] = list(t.shape)
        h, w = self.image_hw
        if self.arch == ARCH_CONV:
            th, tw = (h + 6 - 7) // 2 + 1, (w + 6 - 7) // 2 + 1
            th, tw = (th - 3) // 2 + 1, (tw - 3) // 2 + 1
            self.register_buffer("pos_enc", fourier_position_encoding(th, tw, (56, 56)))
        elif self.arch == ARCH_FOURIER:
            self.register_buffer("pos_enc", fourier_position_encoding(h, w, (224, 224)))
        elif self.arch == ARCH_LEARNED:
            p = "perceiver.input_preprocessor."
            table = F.linear(self.w(p + "position_embeddings.position_embeddings"),
                             self.w(p + "positions_projection.weight"), self.w(p + "positions_projection.bias"))
            self.register_buffer("pos_enc", table)
        else:
            raise ValueError(f"unknown architecture {self.arch}")

    def w(self, name):
        return getattr(self, name.replace(".", "__"))

    def ln(self, x, prefix):
        return F.layer_norm(x, self.dims[prefix + ".weight"], self.w(prefix + ".weight"), self.w(prefix + ".bias"),
                            LN_EPS)

    def preprocess(self, pixels):
        b = pixels.shape[0]
        p = "perceiver.input_preprocessor."
        if self.arch == ARCH_CONV:
            x = F.conv2d(F.pad(pixels, (3, 3, 3, 3)), self.w(p + "convnet.conv.weight"), stride=2)
            bn = p + "convnet.batchnorm."
            scale = self.w(bn + "weight") / torch.sqrt(self.w(bn + "running_var") + 1e-5)
            shift = self.w(bn + "bias") - self.w(bn + "running_mean") * scale
            x = torch.relu(x * scale[None, :, None, None] + shift[None, :, None, None])
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            feats = x.permute(0, 2, 3, 1).reshape(b, -1, 64)
        elif self.arch == ARCH_FOURIER:
            feats = pixels.permute(0, 2, 3, 1).reshape(b, -1, 3)
        else:
            x = F.conv2d(pixels, self.w(p + "convnet_1x1.weight"), self.w(p + "convnet_1x1.bias"))
            feats = x.permute(0, 2, 3, 1).reshape(b, -1, 256)
        pos = self.pos_enc[None].expand(b, -1, -1)
        return torch.cat([feats, pos], dim=-1)

    def layer(self, prefix, x, kv, heads):
        """One PerceiverLayer: pre-LN attention with query residual, then x + MLP(LN(x))."""
        a = prefix + "attention."
        xn = self.ln(x, a + "self.layernorm1")
        kvn = xn if kv is None else self.ln(kv, a + "self.layernorm2")
        q = F.linear(xn, self.w(a + "self.query.weight"), self.w(a + "self.query.bias"))
        k = F.linear(kvn, self.w(a + "self.key.weight"), self.w(a + "self.key.bias"))
        v = F.linear(kvn, self.w(a + "self.value.weight"), self.w(a + "self.value.bias"))
        cq, cv = self.dims[a + "self.query.weight"][0], self.dims[a + "self.value.weight"][0]
        b, nq, nk = x.shape[0], x.shape[1], kvn.shape[1]
        q = q.reshape(b, nq, heads, cq // heads).transpose(1, 2)
        k = k.reshape(b, nk, heads, cq // heads).transpose(1, 2)
        v = v.reshape(b, nk, heads, cv // heads).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(cq // heads)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, nq, cv)
        h = F.linear(ctx, self.w(a + "output.dense.weight"), self.w(a + "output.dense.bias")) + x
        hn = self.ln(h, prefix + "layernorm")
        hidden = F.gelu(F.linear(hn, self.w(prefix + "mlp.dense1.weight"), self.w(prefix + "mlp.dense1.bias")))
        return h + F.linear(hidden, self.w(prefix + "mlp.dense2.weight"), self.w(prefix + "mlp.dense2.bias"))

    def forward(self, pixels):
        b = pixels.shape[0]
        inputs = self.preprocess(pixels)
        lat = self.w("perceiver.embeddings.latents")
        z = self.layer("perceiver.encoder.cross_attention.", lat[None].expand(b, -1, -1), inputs, self.cross_heads)
        for _ in range(self.num_blocks):
            for i in range(self.num_self):
                z = self.layer(f"perceiver.encoder.self_attends.{i}.", z, None, self.self_heads)
        d = "perceiver.decoder.decoder."
        query = self.w(d + "output_position_encodings.position_embeddings")[None].expand(b, -1, -1)
        out = self.layer(d + "decoding_cross_attention.", query, z, 1)
        logits = F.linear(out, self.w(d + "final_layer.weight"), self.w(d + "final_layer.bias"))
        return logits[:, 0]


def load_model(model_dir, image_hw=(224, 224)):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    state = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    return PerceiverTwin(config, state, image_hw).eval()


# --- a full-size random conv checkpoint ----------------------------------------------------------------------

CONV_CONFIG = {
    "architectures": [ARCH_CONV], "model_type": "perceiver", "num_latents": 512, "d_latents": 1024, "d_model": 322,
    "num_blocks": 8, "num_self_attends_per_block": 6, "num_self_attention_heads": 8, "num_cross_attention_heads": 1,
    "qk_channels": None, "v_channels": None, "cross_attention_shape_for_attention": "kv",
    "self_attention_widening_factor": 1, "cross_attention_widening_factor": 1, "hidden_act": "gelu",
    "use_query_residual": True, "image_size": 56, "num_labels": 1000, "layer_norm_eps": 1e-12,
    "initializer_range": 0.02, "torch_dtype": "float32",
}


def conv_state_shapes(d=1024, c=322, labels=1000, layers=6):
    """Names and shapes of deepmind/vision-perceiver-conv's state dict (module-registration order)."""
    shapes = {}
    p = "perceiver.input_preprocessor.convnet."
    shapes[p + "conv.weight"] = [64, 3, 7, 7]
    for n in ("weight", "bias", "running_mean", "running_var"):
        shapes[p + "batchnorm." + n] = [64]
    shapes[p + "batchnorm.num_batches_tracked"] = []
    shapes["perceiver.embeddings.latents"] = [512, d]

    def layer(prefix, q_dim, kv_dim, qk, cross):
        a = prefix + "attention.self."
        shapes[a + "layernorm1.weight"] = shapes[a + "layernorm1.bias"] = [q_dim]
        if cross:
            shapes[a + "layernorm2.weight"] = shapes[a + "layernorm2.bias"] = [kv_dim]
        shapes[a + "query.weight"], shapes[a + "query.bias"] = [qk, q_dim], [qk]
        shapes[a + "key.weight"], shapes[a + "key.bias"] = [qk, kv_dim], [qk]
        shapes[a + "value.weight"], shapes[a + "value.bias"] = [qk, kv_dim], [qk]
        shapes[prefix + "attention.output.dense.weight"] = [q_dim, qk]
        shapes[prefix + "attention.output.dense.bias"] = [q_dim]
        shapes[prefix + "layernorm.weight"] = shapes[prefix + "layernorm.bias"] = [q_dim]
        shapes[prefix + "mlp.dense1.weight"], shapes[prefix + "mlp.dense1.bias"] = [q_dim, q_dim], [q_dim]
        shapes[prefix + "mlp.dense2.weight"], shapes[prefix + "mlp.dense2.bias"] = [q_dim, q_dim], [q_dim]

    layer("perceiver.encoder.cross_attention.", d, c, c, True)
    for i in range(layers):
        layer(f"perceiver.encoder.self_attends.{i}.", d, d, d, False)
    dp = "perceiver.decoder.decoder."
    shapes[dp + "output_position_encodings.position_embeddings"] = [1, d]
    layer(dp + "decoding_cross_attention.", d, d, d, True)
    shapes[dp + "final_layer.weight"], shapes[dp + "final_layer.bias"] = [labels, d], [labels]
    return shapes


def make_checkpoint(out_dir, seed=0):
    """HF-style initialisation: weights N(0, 0.02), LayerNorm 1/0, biases 0, BatchNorm identity statistics."""
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in conv_state_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros(shape, dtype=torch.int64)
        elif ("norm" in name and name.endswith(".weight")) or name.endswith("running_var"):
            state[name] = torch.ones(shape)
        elif name.endswith(".bias") or name.endswith("running_mean"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.02
    save_safetensors(os.path.join(out_dir, "model.safetensors"), state)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(CONV_CONFIG, f, indent=2)
    print(f"wrote {out_dir}/model.safetensors ({sum(t.numel() for t in state.values())} values) and config.json")


# --- commands ------------------------------------------------------------------------------------------------


def validate(vectors_dir):
    """The twin against the golden vectors (HF PyTorch outputs): logits within 1e-4 * max(1, max|want|)."""
    ok = True
    for variant in ("conv-tiny", "fourier-tiny", "learned-tiny"):
        d = os.path.join(vectors_dir, variant)
        pixels = torch.from_numpy(np.load(os.path.join(d, "pixel_values.npy")).astype(np.float32))
        want = np.load(os.path.join(d, "logits.npy"))
        model = load_model(d, tuple(pixels.shape[2:]))
        with torch.inference_mode():
            got = model(pixels).numpy()
        err = float(np.abs(got - want).max())
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        print(f"{variant}: max|twin - HF| = {err:.3g} (tolerance {tol:.3g}) {'ok' if err <= tol else 'FAIL'}")
        ok &= err <= tol
    return ok


def export_onnx(model_dir, out_path, batch, image_hw=(224, 224)):
    model = load_model(model_dir, image_hw)
    dummy = torch.zeros(batch, 3, *model.image_hw)
    # PyTorch >= 2.5 can export through dynamo; the TorchScript exporter is the one 1.13 has: use it everywhere.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(model, (dummy,), out_path, opset_version=14, input_names=["pixel_values"],
                          output_names=["logits"], do_constant_folding=True, **legacy)
    print(f"wrote {out_path}")


def loaded_blas():
    """The BLAS library this process runs on, from /proc/self/maps: Debian's torch calls libblas.so.3, which
    the alternatives system points at OpenBLAS (libopenblas0-pthread) or at the slow reference BLAS."""
    libs = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            name = os.path.basename(path)
            if "blas" in name or "mkl" in name:
                libs.add(os.path.realpath(path))
    if not libs:
        return "unknown (no BLAS library mapped)"
    kind = "openblas" if any("openblas" in p for p in libs) else \
        "mkl" if any("mkl" in p for p in libs) else "reference BLAS"
    return kind + " (" + ", ".join(sorted(libs)) + ")"


def bench(model_dir, threads, batch, iters, warmup):
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(model_dir)
    load_ms = (time.perf_counter() - t0) * 1e3
    h, w = model.image_hw
    pixels = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2, (batch, 3, h, w)).astype(np.float32))
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            model(pixels)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "engine": f"pytorch {torch.__version__}", "blas": loaded_blas(), "threads": threads, "batch": batch, "load_ms": load_ms,
        "times_ms": times, "median_ms": float(np.median(times)), "min_ms": min(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--vectors", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "vectors"))
    c = sub.add_parser("checkpoint")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--size", type=int, default=224, help="square input side in pixels (the model's image size)")
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--iters", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "validate":
        sys.exit(0 if validate(args.vectors) else 1)
    elif args.cmd == "checkpoint":
        make_checkpoint(args.out, args.seed)
    elif args.cmd == "export":
        export_onnx(args.model, args.out, args.batch, (args.size, args.size))
    else:
        bench(args.model, args.threads, args.batch, args.iters, args.warmup)


if __name__ == "__main__":
    main()
