#!/usr/bin/env python3
"""Writes the small committed seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Standard library only. Everything is built here from scratch (the torch.save pickles through stand-in
modules, so torch is not needed); the real checkpoint's tensor names come from ../shared when it is there.
    python3 fuzz/make_corpus.py [SHARED_DIR]
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# --- safetensors -----------------------------------------------------------------------------------------
def safetensors(tensors, metadata=None, align=8):
    """tensors: [(name, dtype, shape, raw bytes)]"""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    if align:
        text += b" " * (-(8 + len(text)) % align)
    return struct.pack("<Q", len(text)) + text + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


put("fuzz_safetensors", "small", safetensors(
    [("a", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("b", "F16", [4], struct.pack("<4H", 0x3c00, 0x8001, 0x7c00, 0x7e00)),
     ("c", "BF16", [2, 2], struct.pack("<4H", 0x3f80, 0, 0xff80, 1)), ("d", "I64", [2], struct.pack("<2q", -1, 7)),
     ("e", "F32", [0, 5], b""), ("s", "F32", [], f32(3.5))], {"format": "pt"}))
put("fuzz_safetensors", "misaligned", safetensors([("x", "F16", [1], b"\x00\x3c"), ("y", "F32", [3], f32(1, 2, 3))],
                                                  align=0))
real = os.path.join(SHARED, "vectors", "conv-tiny", "model.safetensors")
if os.path.exists(real):  # the real tensor names, each shrunk to one element
    with open(real, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        names = [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    put("fuzz_safetensors", "conv-tiny-names",
        safetensors([(k, "F32", [1, 1], f32(0.5)) for k in sorted(names)[:40]], {"format": "pt"}))


# --- torch.save zip + pickle ---------------------------------------------------------------------------------
def stand_in_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils

    def _rebuild_tensor_v2(*args):
        pass

    def _rebuild_parameter(*args):
        pass

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
        setattr(utils, fn.__name__, fn)
    for cls in ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage"):
        t = type(cls, (), {"__module__": "torch"})
        setattr(torch, cls, t)
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return torch


TORCH = stand_in_torch()


class Storage:
    def __init__(self, kind, key, raw, numel):
        self.kind, self.key, self.raw, self.numel = kind, key, raw, numel


class Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.parameter = parameter

    def __reduce_ex__(self, protocol):
        if self.parameter:
            inner = Tensor(*self.args[:4])
            return (TORCH._utils._rebuild_parameter, (inner, False, collections.OrderedDict()))
        return (TORCH._utils._rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def state_dict_pickle(tensors, protocol=2):
    sd = collections.OrderedDict(tensors)
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    out = io.BytesIO()
    TorchPickler(out, protocol=protocol).dump(sd)
    return out.getvalue()


def torch_zip(tensors, storages, root="archive", protocol=2):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(root + "/data.pkl", state_dict_pickle(tensors, protocol))
        z.writestr(root + "/byteorder", "little")
        for s in storages:
            z.writestr(root + "/data/" + s.key, s.raw)
        z.writestr(root + "/version", "3\n")
    return out.getvalue()


s0 = Storage(TORCH.FloatStorage, "0", f32(*range(12)), 12)
s1 = Storage(TORCH.HalfStorage, "1", struct.pack("<3H", 0x3c00, 0x4000, 0xc000), 3)
s2 = Storage(TORCH.BFloat16Storage, "2", struct.pack("<2H", 0x3f80, 0x4000), 2)
s3 = Storage(TORCH.LongStorage, "3", struct.pack("<q", 1), 1)
tensors = [("w", Tensor(s0, 0, [3, 4], [4, 1])), ("w_t", Tensor(s0, 0, [4, 3], [1, 4])),  # transposed view
           ("tail", Tensor(s0, 10, [2], [1])), ("h", Tensor(s1, 0, [3], [1])), ("bf", Tensor(s2, 0, [2], [1])),
           ("n", Tensor(s3, 0, [], [])), ("p", Tensor(s0, 0, [2, 2], [2, 1], parameter=True)),
           ("empty", Tensor(s0, 0, [0, 3], [3, 1]))]
put("fuzz_torch_zip", "small", torch_zip(tensors, [s0, s1, s2, s3]))
put("fuzz_torch_zip", "protocol4", torch_zip(tensors[:3], [s0], root="pytorch_model", protocol=4))
put("fuzz_pickle", "small-p2", state_dict_pickle(tensors))
put("fuzz_pickle", "small-p4", state_dict_pickle(tensors, protocol=4))
real = os.path.join(SHARED, "vectors", "conv-tiny", "pytorch_model.bin")
if os.path.exists(real):
    with zipfile.ZipFile(real) as z:
        put("fuzz_pickle", "conv-tiny-data.pkl", z.read("pytorch_model/data.pkl"))


# --- config.json -----------------------------------------------------------------------------------------
def config(arch, **extra):
    c = {"architectures": [arch], "model_type": "perceiver", "num_latents": 8, "d_latents": 16, "num_blocks": 1,
         "num_self_attends_per_block": 2, "num_self_attention_heads": 2, "num_cross_attention_heads": 1,
         "qk_channels": None, "v_channels": None, "cross_attention_shape_for_attention": "kv",
         "self_attention_widening_factor": 1, "cross_attention_widening_factor": 1, "use_query_residual": True,
         "hidden_act": "gelu", "image_size": 8, "id2label": {"0": "cat", "1": "dog"},
         "label2id": {"cat": 0, "dog": 1}}
    c.update(extra)
    return json.dumps(c, indent=1)


put("fuzz_config", "conv", config("PerceiverForImageClassificationConvProcessing"))
put("fuzz_config", "fourier", config("PerceiverForImageClassificationFourier", qk_channels=32, v_channels=16,
                                     cross_attention_shape_for_attention="q"))
put("fuzz_config", "learned", config("PerceiverForImageClassificationLearned", num_labels=2))
put("fuzz_config", "minimal", json.dumps({"architectures": ["PerceiverForImageClassificationFourier"],
                                          "num_labels": 3}))

# --- preprocessor_config.json --------------------------------------------------------------------------------
put("fuzz_preprocessor_config", "current", json.dumps({
    "crop_size": {"height": 16, "width": 12}, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"height": 8, "width": 10}}))
put("fuzz_preprocessor_config", "legacy", json.dumps({
    "crop_size": 20, "size": [6, 9], "do_center_crop": True, "resample": 1, "image_mean": 0.5, "image_std": 0.5,
    "feature_extractor_type": "PerceiverFeatureExtractor"}))
put("fuzz_preprocessor_config", "nulls", json.dumps({
    "do_center_crop": None, "do_resize": True, "size": {"shortest_edge": 5}, "resample": None,
    "image_mean": None, "do_normalize": False}))


# --- .npy ----------------------------------------------------------------------------------------------------
def npy(descr, shape, raw, version=1, fortran=False):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims)
    prefix = 10 if version == 1 else 12
    d += " " * (-(prefix + len(d) + 1) % 64) + "\n"
    length = struct.pack("<H", len(d)) if version == 1 else struct.pack("<I", len(d))
    return b"\x93NUMPY" + bytes([version, 0]) + length + d.encode("latin-1") + raw


put("fuzz_npy", "f4", npy("<f4", [1, 3, 2, 2], f32(*range(12))))
put("fuzz_npy", "f8-v2", npy("<f8", [2], struct.pack("<2d", 1.5, -2), version=2))
put("fuzz_npy", "f2-v3", npy("<f2", [2, 1], struct.pack("<2H", 0x3c00, 0x7c00), version=3))
put("fuzz_npy", "i8", npy("<i8", [3], struct.pack("<3q", -1, 0, 1 << 40)))
put("fuzz_npy", "u1", npy("|u1", [2, 2], bytes([0, 1, 254, 255])))
put("fuzz_npy", "b1-scalar", npy("|b1", [], b"\x01"))
put("fuzz_npy", "u8", npy("<u8", [1], struct.pack("<Q", 1 << 63)))
put("fuzz_npy", "empty", npy("<i4", [0, 4], b""))


# --- PNG -----------------------------------------------------------------------------------------------------
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png(width, height, color_type, depth, interlace=False, extra_before=(), extra_after=(), palette=None):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]

    def pixel(x, y, c):  # a deterministic pattern within the bit depth
        return (x * 37 + y * 91 + c * 53) % (1 << depth)

    def rows(xs, ys):
        out = b""
        for y in ys:
            acc, n, line = 0, 0, bytearray()
            for x in xs:
                for c in range(channels):
                    acc, n = (acc << depth) | pixel(x, y, c), n + depth
                    while n >= 8:
                        line.append((acc >> (n - 8)) & 0xff)
                        n -= 8
            if n:
                line.append((acc << (8 - n)) & 0xff)
            out += b"\x00" + bytes(line)  # filter type None
        return out

    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            xs, ys = list(range(x0, width, dx)), list(range(y0, height, dy))
            if xs and ys:
                raw += rows(xs, ys)
    else:
        raw = rows(range(width), range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 1 if interlace else 0)
    body = chunk(b"IHDR", ihdr)
    for c in extra_before:
        body += c
    if color_type == 3:
        entries = palette if palette is not None else (1 << depth)
        body += chunk(b"PLTE", bytes((i * 40 + c * 90) % 256 for i in range(entries) for c in range(3)))
        body += chunk(b"tRNS", bytes([0, 128]))
    body += chunk(b"IDAT", zlib.compress(raw, 9))
    for c in extra_after:
        body += c
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def tiff_orientation(value):
    # "Exif\0\0" is added by the caller where the container wants it; little-endian TIFF, one IFD entry.
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) \
        + struct.pack("<I", 0)


for ct, depths in ((0, (1, 2, 4, 8, 16)), (2, (8, 16)), (3, (1, 2, 4, 8)), (4, (8, 16)), (6, (8, 16))):
    for depth in depths:
        put("fuzz_png", "ct%d-d%d" % (ct, depth), png(5, 3, ct, depth))
put("fuzz_png", "interlaced-rgb", png(9, 7, 2, 8, interlace=True))
put("fuzz_png", "interlaced-gray2", png(10, 9, 0, 2, interlace=True))
put("fuzz_png", "short-palette", png(4, 4, 3, 4, palette=3))
put("fuzz_png", "exif", png(6, 4, 2, 8, extra_before=[chunk(b"eXIf", tiff_orientation(6))]))
hexed = tiff_orientation(8).hex()
raw_profile = "\nexif\n%8d\n%s\n" % (len(hexed) // 2, "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)))
put("fuzz_png", "raw-profile", png(6, 4, 2, 8, extra_after=[
    chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(raw_profile.encode()))]))
xmp = '<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
put("fuzz_png", "xmp", png(6, 4, 6, 8, extra_before=[
    chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode())]))

# --- JPEG: the small real one with EXIF orientation 6 (the bigger ones are added by scripts/fuzz.sh) ----------
rocket = os.path.join(SHARED, "vectors", "preprocess", "rocket_small_exif6.jpg")
if os.path.exists(rocket):
    with open(rocket, "rb") as f:
        put("fuzz_jpeg", "rocket_small_exif6.jpg", f.read())


# --- WebP: lossless (VP8L) images written bit by bit --------------------------------------------------------
class Bits:
    def __init__(self):
        self.value, self.n = 0, 0

    def put(self, v, n):
        self.value |= v << self.n
        self.n += n

    def bytes(self):
        return self.value.to_bytes((self.n + 7) // 8, "little")


def vp8l_flat(width, height, argb, alpha_used):
    """Every pixel the same colour: five one-symbol prefix codes, then no bits per pixel."""
    b = Bits()
    b.put(0x2f, 8)
    b.put(width - 1, 14)
    b.put(height - 1, 14)
    b.put(1 if alpha_used else 0, 1)
    b.put(0, 3)  # version
    b.put(0, 1)  # no transform
    b.put(0, 1)  # no colour cache
    b.put(0, 1)  # no meta prefix codes
    a, r, g, bl = (argb >> 24) & 255, (argb >> 16) & 255, (argb >> 8) & 255, argb & 255
    for symbol in (g, r, bl, a, 0):  # green, red, blue, alpha, distance
        b.put(1, 1)  # simple code
        b.put(0, 1)  # one symbol
        b.put(1, 1)  # 8-bit symbol
        b.put(symbol, 8)
    data = b.bytes()
    body = b"VP8L" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def webp_with_exif(inner, width, height, orientation):
    exif = b"Exif\x00\x00" + tiff_orientation(orientation)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    exif_chunk = b"EXIF" + struct.pack("<I", len(exif)) + exif + (b"\x00" if len(exif) % 2 else b"")
    body = vp8x + inner[12:] + exif_chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


put("fuzz_webp", "flat", vp8l_flat(7, 5, 0xff336699, False))
put("fuzz_webp", "flat-alpha", vp8l_flat(3, 9, 0x80ff0000, True))
put("fuzz_webp", "exif", webp_with_exif(vp8l_flat(6, 4, 0xff00ff00, False), 6, 4, 6))
print("corpus written to", ROOT)
