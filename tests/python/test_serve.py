"""`perceiver serve` end to end: the real server on 127.0.0.1 with real models, talked to over real sockets
with the standard library's http.client (no client package of ours or Triton's).

Golden values: Hugging Face logits in /work/shared (vectors/<model>/logits.npy for pixel_values.npy, and
models/fashion-mnist-conv/expected/images_logits.npy for the PNG files in expected/images/, decoded and
preprocessed by the server). Tolerance: 1e-4 x max(1, max |logit|), as the CLI's golden tests.

Environment: PERCEIVER_CLI (the perceiver binary; default build/bin/perceiver), PERCEIVER_SHARED_DIR.
"""
import base64
import http.client
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = os.environ.get("PERCEIVER_CLI", str(ROOT / "build" / "bin" / "perceiver"))
SHARED = Path(os.environ.get("PERCEIVER_SHARED_DIR", ROOT.parent / "shared"))
CONV = SHARED / "vectors" / "conv-tiny"
FOURIER = SHARED / "vectors" / "fourier-tiny"
FASHION = SHARED / "models" / "fashion-mnist-conv"
FASHION_IMAGES = sorted((FASHION / "expected" / "images").glob("*.png"))


def assert_close(got, want, rel=1e-4):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    tol = rel * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol, f"max |got - want| = {err} > {tol}"


class Server:
    """A `perceiver serve --port 0` process; the port is read from its ready line on stderr."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([CLI, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"ready at http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log) + self.proc.stderr.read())
        self.drain = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self.drain.start()

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method, path, payload=None, **kw):
        body = None if payload is None else json.dumps(payload).encode()
        status, headers, data = self.request(method, path, body, {"Content-Type": "application/json"}, **kw)
        return status, json.loads(data) if data else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    s = Server("--model", str(CONV), "--model", str(FOURIER), "--model", f"fashion={FASHION}",
               "--max-body-mb", "1", "--threads", "2")
    yield s
    assert s.stop() == 0, "".join(s.log)


def pixel_request(pixels, **extra):
    return {"inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                        "data": pixels.ravel().tolist()}], **extra}


def infer_binary(server, model, header, payload, accept_binary=True):
    """POST with the binary tensor data extension; returns (status, response JSON, binary tail)."""
    head = json.dumps(header).encode()
    status, headers, data = server.request(
        "POST", f"/v2/models/{model}/infer", head + payload,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
    if "inference-header-content-length" in headers:
        n = int(headers["inference-header-content-length"])
        return status, json.loads(data[:n]), data[n:]
    return status, json.loads(data), b""


def split_bytes(blob):
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<I", blob, pos)
        out.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def test_health_and_metadata(server):
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = server.json("GET", "/v2")
    assert status == 200 and meta["name"] and meta["version"]
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    for name in ("conv-tiny", "fourier-tiny", "fashion"):
        assert server.json("GET", f"/v2/models/{name}/ready")[0] == 200
    status, m = server.json("GET", "/v2/models/fashion")
    assert status == 200 and m["name"] == "fashion"
    assert {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 56, 56]} in m["inputs"]
    assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in m["inputs"]
    assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    status, m = server.json("GET", "/v2/models/conv-tiny/versions/1")
    assert status == 200 and [i["name"] for i in m["inputs"]] == ["pixel_values"]  # no preprocessor
    status, config = server.json("GET", "/v2/models/fashion/config")
    assert status == 200 and config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert config["input"][0]["dims"] == [3, 56, 56] and config["output"][0]["dims"] == [10]


@pytest.mark.parametrize("model,folder", [("conv-tiny", CONV), ("fourier-tiny", FOURIER)])
def test_json_fp32_logits_equal_huggingface(server, model, folder):
    pixels, want = np.load(folder / "pixel_values.npy"), np.load(folder / "logits.npy")
    status, r = server.json("POST", f"/v2/models/{model}/infer", pixel_request(pixels, id="req-7"))
    assert status == 200, r
    assert r["id"] == "req-7" and r["model_name"] == model
    (out,) = r["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == list(want.shape)
    assert_close(np.array(out["data"]).reshape(want.shape), want)


@pytest.mark.parametrize("model,folder", [("conv-tiny", CONV), ("fourier-tiny", FOURIER)])
def test_binary_data_both_ways_equal_huggingface(server, model, folder):
    pixels, want = np.load(folder / "pixel_values.npy"), np.load(folder / "logits.npy")
    raw = pixels.astype("<f4").tobytes()
    header = {"inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": len(raw)}}],
              "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    status, r, tail = infer_binary(server, model, header, raw)
    assert status == 200, r
    (out,) = r["outputs"]
    assert out["parameters"]["binary_data_size"] == want.size * 4 == len(tail)
    assert_close(np.frombuffer(tail, "<f4").reshape(out["shape"]), want)
    # Binary in, JSON out.
    header["outputs"] = [{"name": "logits"}]
    status, r, tail = infer_binary(server, model, header, raw)
    assert status == 200 and tail == b""
    assert_close(np.array(r["outputs"][0]["data"]).reshape(want.shape), want)


def test_base64_bytes_images_equal_huggingface(server):
    want = np.load(FASHION / "expected" / "images_logits.npy")
    files = [p.read_bytes() for p in FASHION_IMAGES]
    request = {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES",
                           "data": [base64.b64encode(f).decode() for f in files]}]}
    status, r = server.json("POST", "/v2/models/fashion/infer", request)
    assert status == 200, r
    assert_close(np.array(r["outputs"][0]["data"]).reshape(want.shape), want)
    # The same files as binary BYTES elements (4-byte length + raw file), classification as binary output.
    blob = b"".join(struct.pack("<I", len(f)) + f for f in files[:3])
    header = {"inputs": [{"name": "image", "shape": [3, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(blob)}}],
              "outputs": [{"name": "logits", "parameters": {"classification": 2, "binary_data": True}}]}
    status, r, tail = infer_binary(server, "fashion", header, blob)
    assert status == 200, r
    assert r["outputs"][0]["datatype"] == "BYTES" and r["outputs"][0]["shape"] == [3, 2]
    labels = json.loads((FASHION / "config.json").read_text())["id2label"]
    got = [s.decode().split(":", 2) for s in split_bytes(tail)]
    for row in range(3):
        order = np.argsort(-want[row], kind="stable")[:2]
        for k in range(2):
            value, index, label = got[row * 2 + k]
            assert int(index) == order[k] and label == labels[str(order[k])]
            assert abs(float(value) - want[row, order[k]]) <= 1e-4 * max(1.0, np.abs(want).max())


def test_classification_extension_json(server):
    pixels, want = np.load(CONV / "pixel_values.npy"), np.load(CONV / "logits.npy")
    status, r = server.json("POST", "/v2/models/conv-tiny/infer", pixel_request(
        pixels, outputs=[{"name": "logits", "parameters": {"classification": 3}}]))
    assert status == 200, r
    out = r["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 3]
    for row in range(2):
        order = np.argsort(-want[row], kind="stable")[:3]
        assert [int(s.split(":")[1]) for s in out["data"][row * 3:row * 3 + 3]] == list(order)


def test_raw_image_endpoint_top_k(server):
    want = np.load(FASHION / "expected" / "images_logits.npy")[0]
    probs = np.exp(want - want.max())
    probs /= probs.sum()
    labels = json.loads((FASHION / "config.json").read_text())["id2label"]
    body = FASHION_IMAGES[0].read_bytes()
    for query, k in (("", 5), ("?top_k=3", 3)):
        status, _, data = server.request("POST", "/models/fashion" + query, body, {"Content-Type": "image/png"})
        assert status == 200, data
        answer = json.loads(data)
        order = np.argsort(-probs, kind="stable")[:k]
        assert [a["label"] for a in answer] == [labels[str(i)] for i in order]
        assert np.allclose([a["score"] for a in answer], probs[order], atol=1e-5)


def error_cases():
    pixels = np.load(CONV / "pixel_values.npy")
    good = pixel_request(pixels)
    wrong_count = pixel_request(pixels)
    wrong_count["inputs"][0]["data"] = wrong_count["inputs"][0]["data"][:-1]
    wrong_shape = pixel_request(pixels[:, :2])
    wrong_type = pixel_request(pixels)
    wrong_type["inputs"][0]["datatype"] = "INT32"
    b64 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}
    garbage = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(b"\x89PNG\r\n\x1a\n garbage").decode()]}]}
    unknown_output = dict(good, outputs=[{"name": "probs"}])
    j = lambda x: json.dumps(x).encode()
    hdr = {"Content-Type": "application/json"}
    return [  # (method, path, body, headers, status)
        ("POST", "/v2/models/conv-tiny/infer", b"{not json", hdr, 400),
        ("POST", "/v2/models/conv-tiny/infer", j(wrong_count), hdr, 400),
        ("POST", "/v2/models/conv-tiny/infer", j(wrong_shape), hdr, 400),
        ("POST", "/v2/models/conv-tiny/infer", j(wrong_type), hdr, 400),
        ("POST", "/v2/models/conv-tiny/infer", j(unknown_output), hdr, 400),
        ("POST", "/v2/models/fashion/infer", j(b64), hdr, 400),
        ("POST", "/v2/models/fashion/infer", j(garbage), hdr, 400),
        ("POST", "/v2/models/conv-tiny/infer", j(garbage), hdr, 400),  # no preprocessor
        ("POST", "/v2/models/fourier-tiny/infer", j(pixel_request(pixels[:0])), hdr, 400),  # empty batch
        ("POST", "/v2/models/nope/infer", j(good), hdr, 404),
        ("GET", "/v2/models/nope", None, {}, 404),
        ("GET", "/v2/models/conv-tiny/versions/9", None, {}, 404),
        ("GET", "/no/such/route", None, {}, 404),
        ("POST", "/models/fashion", b"not an image", {"Content-Type": "image/png"}, 400),
        ("POST", "/models/fashion?top_k=x", FASHION_IMAGES[0].read_bytes(), {"Content-Type": "image/png"}, 400),
        ("POST", "/models/fashion", b"\0" * (1 << 20 | 1), {"Content-Type": "image/png"}, 413),
    ]


def test_error_cases_answer_json_4xx(server):
    for method, path, body, headers, want in error_cases():
        status, _, data = server.request(method, path, body, headers)
        assert status == want, (path, status, data)
        message = json.loads(data)["error"]
        assert isinstance(message, str) and message, (path, data)
    assert server.json("GET", "/v2/health/ready")[0] == 200  # still serving


def metric(text, name, model):
    m = re.search(rf'^{name}\{{model="{model}"\}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_64_concurrent_clients_batched_and_equal_to_solo(server):
    pixels = np.load(CONV / "pixel_values.npy")
    singles = [pixels[i:i + 1] for i in range(2)]
    solo = []
    for p in singles:
        status, r = server.json("POST", "/v2/models/conv-tiny/infer", pixel_request(p))
        assert status == 200
        solo.append(np.array(r["outputs"][0]["data"], np.float32))
    before = server.request("GET", "/metrics")[2].decode()
    bodies = [json.dumps(pixel_request(p)).encode() for p in singles]
    errors, mismatches, bad_answers = [], [], []
    bad = error_cases()

    def client(c):
        for i in range(20):
            which = (c + i) % 2
            try:
                status, _, data = server.request("POST", "/v2/models/conv-tiny/infer", bodies[which],
                                                 {"Content-Type": "application/json"})
                if status != 200:
                    errors.append((status, data))
                    continue
                got = np.array(json.loads(data)["outputs"][0]["data"], np.float32)
                if np.abs(got - solo[which]).max() > 1e-5 * max(1.0, np.abs(solo[which]).max()):
                    mismatches.append((got, solo[which]))
                if c % 16 == 0 and i % 5 == 0:  # bad requests mixed into the load
                    method, path, body, headers, want = bad[(c + i) % len(bad)]
                    status, _, data = server.request(method, path, body, headers)
                    if status != want or "error" not in json.loads(data):
                        bad_answers.append((path, status, data))
            except Exception as e:  # noqa: BLE001 (any failure is a test failure)
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:1]
    assert not bad_answers, bad_answers[:3]
    after = server.request("GET", "/metrics")[2].decode()
    passes = metric(after, "perceiver_batch_size_count", "conv-tiny") - metric(before, "perceiver_batch_size_count", "conv-tiny")
    images = metric(after, "perceiver_batch_size_sum", "conv-tiny") - metric(before, "perceiver_batch_size_sum", "conv-tiny")
    assert images == 64 * 20
    assert images / passes > 1.5, f"mean batch size {images / passes:.2f}"
    assert re.search(r'^perceiver_requests_total\{model="conv-tiny",code="200"\} \d+$', after, re.M)
    assert "perceiver_request_duration_seconds_bucket" in after and "perceiver_inference_seconds_sum" in after
    assert "perceiver_queue_depth" in after


def test_sigterm_answers_requests_in_flight_and_exits_0():
    # A long queue delay keeps the requests waiting in the queue when SIGTERM arrives.
    s = Server("--model", str(CONV), "--max-queue-delay-ms", "700", "--max-batch", "64", "--threads", "2")
    body = json.dumps(pixel_request(np.load(CONV / "pixel_values.npy")[:1])).encode()
    results = []

    def client():
        try:
            results.append(s.request("POST", "/v2/models/conv-tiny/infer", body, {"Content-Type": "application/json"})[0])
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert s.proc.wait(timeout=30) == 0, "".join(s.log)
    assert results == [200] * 12, results
    log = "".join(s.log)
    assert "SIGTERM" in log and "stopped" in log
