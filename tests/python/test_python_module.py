"""The Python module `perceiver` against Hugging Face's outputs (run by ctest: /usr/bin/python3 -m pytest).

Environment (set by tests/CMakeLists.txt): PYTHONPATH=build/python, PERCEIVER_SHARED_DIR (golden vectors and
models), PERCEIVER_CLI (the perceiver command, for top-1 cross-checks), PERCEIVER_SOURCE_DIR (samples/).
"""

import io
import json
import os
import pathlib
import subprocess
import threading

import numpy as np
import PIL.Image
import pytest

import perceiver

SHARED = pathlib.Path(os.environ.get("PERCEIVER_SHARED_DIR", pathlib.Path(__file__).parents[3] / "shared"))
SOURCE = pathlib.Path(os.environ.get("PERCEIVER_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
CLI = os.environ.get("PERCEIVER_CLI")
FASHION = SHARED / "models" / "fashion-mnist-conv"
FASHION_IMAGES = sorted((FASHION / "expected" / "images").iterdir())  # images_logits.npy rows, in this order
CAT = SOURCE / "samples" / "cat.jpg"

# fp32 logits against HF PyTorch: absolute, as every golden test of the engine.
LOGITS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fashion():
    return perceiver.Model(FASHION, threads=2)


@pytest.mark.parametrize("variant", ["conv-tiny", "fourier-tiny", "learned-tiny"])
def test_logits_match_hf(variant):
    folder = SHARED / "vectors" / variant
    model = perceiver.Model(str(folder), threads=2)
    pixels = np.load(folder / "pixel_values.npy")
    expected = np.load(folder / "logits.npy")
    logits = model.logits(pixels)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    assert np.abs(logits - expected).max() <= LOGITS_TOLERANCE
    # A non-contiguous / float64 view is converted, same result.
    strided = np.asfortranarray(pixels.astype(np.float64))
    assert np.abs(model.logits(strided) - expected).max() <= LOGITS_TOLERANCE
    assert len(model.labels) == expected.shape[1] and all(isinstance(l, str) for l in model.labels)
    assert model.config == json.loads((folder / "config.json").read_text())


def test_image_logits_match_hf(fashion):
    expected = np.load(FASHION / "expected" / "images_logits.npy")
    logits = fashion.image_logits([str(p) for p in FASHION_IMAGES])
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() <= LOGITS_TOLERANCE


def _hf_top1(fashion):
    logits = np.load(FASHION / "expected" / "images_logits.npy")
    return [fashion.labels[i] for i in logits.argmax(1)]


def test_classify_every_kind_of_image(fashion):
    paths = FASHION_IMAGES[:6]
    hf = _hf_top1(fashion)[:6]
    kinds = {
        "str": [str(p) for p in paths],
        "PathLike": list(paths),
        "bytes": [p.read_bytes() for p in paths],
        "PIL": [PIL.Image.open(p) for p in paths],
        "gray array": [np.asarray(PIL.Image.open(p).convert("L")) for p in paths],
        "RGB array": [np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths],
    }
    for kind, images in kinds.items():
        results = fashion.classify(images, top_k=3)
        assert len(results) == len(images), kind
        for result, label in zip(results, hf):
            assert [sorted(r) for r in result] == [["label", "score"]] * 3, kind
            assert result[0]["label"] == label, kind
            scores = [r["score"] for r in result]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1, kind
    # One image (not in a list): one list of predictions, as the transformers pipeline.
    one = fashion.classify(str(paths[0]), top_k=2)
    assert isinstance(one, list) and len(one) == 2 and one[0]["label"] == hf[0]


def test_classify_same_as_cli(fashion):
    if not CLI:
        pytest.skip("PERCEIVER_CLI not set")
    files = [str(CAT), str(FASHION_IMAGES[4])]
    out = subprocess.run([CLI, "classify", "--model", str(FASHION), "--json", "--top-k", "3", *files],
                         check=True, capture_output=True, text=True).stdout
    cli = [json.loads(line) for line in out.splitlines()]
    cat_rgb = np.asarray(PIL.Image.open(CAT).convert("RGB"))
    for images in (files, [CAT.read_bytes(), FASHION_IMAGES[4].read_bytes()],
                   [PIL.Image.open(CAT), PIL.Image.open(FASHION_IMAGES[4])],
                   [cat_rgb, np.asarray(PIL.Image.open(FASHION_IMAGES[4]))]):
        ours = fashion.classify(images, top_k=3)
        for row, expected in zip(ours, cli):
            assert [r["label"] for r in row] == expected["labels"]
            assert np.allclose([r["score"] for r in row], expected["probabilities"], atol=1e-6)


def test_array_layouts(fashion):
    rgb = np.asarray(PIL.Image.open(CAT).convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])  # alpha dropped, as convert("RGB")
    strided = np.ascontiguousarray(rgb[:, ::-1])[:, ::-1]  # negative column stride: copied first
    reference = fashion.image_logits(rgb)
    for image in (rgba, strided, rgb[None][0]):
        assert np.array_equal(fashion.image_logits(image), reference)


def _preprocess_model(tmp_path):
    """A model folder with the preprocess vectors' preprocessor_config.json (ImageNet settings)."""
    folder = tmp_path / "imagenet-preprocessed"
    folder.mkdir()
    tiny = SHARED / "vectors" / "conv-tiny"
    (folder / "config.json").write_bytes((tiny / "config.json").read_bytes())
    (folder / "model.safetensors").symlink_to(tiny / "model.safetensors")
    (folder / "preprocessor_config.json").write_bytes(
        (SHARED / "vectors" / "preprocess" / "preprocessor_config.json").read_bytes())
    return perceiver.Model(folder, threads=2)


def test_preprocess_exact(tmp_path):
    model = _preprocess_model(tmp_path)
    folder = SHARED / "vectors" / "preprocess"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["cases"]) >= 4
    for case in manifest["cases"]:
        source = folder / case["source"]
        expected = np.load(folder / case["pixel_values"])
        for image in (source, source.read_bytes(), PIL.Image.open(source)):
            pixels = model.preprocess(image)
            assert pixels.dtype == np.float32 and pixels.shape == tuple(case["pixel_values_shape"])
            assert np.array_equal(pixels, expected), case["source"]
    assert model.image_size == (224, 224)


def test_embed_shapes(fashion):
    d = fashion.config["d_latents"]
    n = fashion.config["num_latents"]
    images = [str(p) for p in FASHION_IMAGES[:3]]
    mean = fashion.embed(images)
    latents = fashion.embed(images, pool="latents")
    decoder = fashion.embed(images, pool="decoder")
    assert mean.shape == (3, d) and latents.shape == (3, n, d) and decoder.shape == (3, d)
    assert mean.dtype == latents.dtype == decoder.dtype == np.float32
    assert np.allclose(mean, latents.mean(axis=1), atol=1e-5)
    assert fashion.embed(images[0]).shape == (1, d)
    with pytest.raises(perceiver.Error, match="pool"):
        fashion.embed(images, pool="max")


def test_errors_name_the_file(fashion, tmp_path):
    assert issubclass(perceiver.Error, Exception)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image\n")
    for call in (fashion.classify, fashion.preprocess, fashion.embed):
        with pytest.raises(perceiver.Error) as info:
            call(str(not_image))
        assert str(not_image) in str(info.value) and info.value.kind == 3
    missing = tmp_path / "missing.png"
    with pytest.raises(perceiver.Error, match=str(missing)):
        fashion.classify([str(CAT), str(missing)])
    with pytest.raises(perceiver.Error, match=r"images\[1\]"):
        fashion.classify([CAT.read_bytes(), b"garbage"])
    with pytest.raises(perceiver.Error, match=r"images\[0\]"):
        fashion.classify(np.zeros((4, 4), np.float32))
    with pytest.raises(perceiver.Error) as info:
        perceiver.Model(tmp_path / "no-model")
    assert str(tmp_path / "no-model") in str(info.value) and info.value.kind == 4
    with pytest.raises(perceiver.Error, match="pixel_values"):
        fashion.logits(np.zeros((1, 1, 56, 56), np.float32))


def test_threads_share_a_model(fashion):
    images = [str(p) for p in FASHION_IMAGES]
    expected = fashion.image_logits(images)
    results = [None] * 4
    errors = []

    def work(slot):
        try:
            results[slot] = fashion.image_logits(images)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert np.array_equal(r, expected)
