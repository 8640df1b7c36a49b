"""The Python module against Hugging Face's golden vectors (run by ctest with Debian's /usr/bin/python3)."""
import io
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import perceiver

SHARED = pathlib.Path(os.environ.get("PERCEIVER_SHARED_DIR", pathlib.Path(__file__).parents[2] / ".." / "shared"))
SOURCE = pathlib.Path(__file__).parents[2]
VECTORS = SHARED / "vectors"
FASHION = SHARED / "models" / "fashion-mnist-conv"
CAT = SOURCE / "samples" / "cat.jpg"


@pytest.mark.parametrize("variant", ["conv-tiny", "fourier-tiny", "learned-tiny"])
def test_logits_match_hugging_face(variant):
    model = perceiver.Model(str(VECTORS / variant))
    pixels = np.load(VECTORS / variant / "pixel_values.npy")
    want = np.load(VECTORS / variant / "logits.npy")
    got = model.logits(pixels)
    assert got.shape == want.shape and got.dtype == np.float32
    # the project's parity bar: 1e-4 x max(1, max|logit|)
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.max(np.abs(want)))
    assert len(model.labels) == want.shape[1]
    assert model.config["architectures"][0].startswith("PerceiverForImageClassification")


def test_classify_every_image_form_gives_the_same_answer():
    from PIL import Image

    model = perceiver.Model(str(FASHION))
    by_path = model.classify(str(CAT), top_k=3)
    assert [set(p) for p in by_path] == [{"label", "score"}] * 3
    assert by_path[0]["score"] >= by_path[1]["score"] >= by_path[2]["score"]
    forms = [pathlib.Path(CAT), CAT.read_bytes(), Image.open(CAT), np.asarray(Image.open(CAT).convert("RGB"))]
    for form in forms:
        got = model.classify(form, top_k=3)
        assert [p["label"] for p in got] == [p["label"] for p in by_path]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in by_path], atol=1e-6)
    # a list in, a list of lists out; top-1 equal to the CLI's
    both = model.classify([str(CAT), CAT.read_bytes()], top_k=1)
    assert len(both) == 2 and both[0][0]["label"] == by_path[0]["label"]
    cli = subprocess.run([os.environ["PERCEIVER_CLI"], "classify", "--model", str(FASHION), str(CAT), "--json", "-k", "1"],
                         check=True, capture_output=True, text=True)
    assert json.loads(cli.stdout)["labels"][0] == by_path[0]["label"]
    gray = np.asarray(Image.open(CAT).convert("L"))
    assert len(model.classify(gray, top_k=2)) == 2


def test_preprocess_is_exactly_hugging_faces(tmp_path):
    # conv-tiny's weights with the preprocessing vectors' preprocessor_config.json
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(VECTORS / "conv-tiny" / name)
    (tmp_path / "preprocessor_config.json").symlink_to(VECTORS / "preprocess" / "preprocessor_config.json")
    model = perceiver.Model(str(tmp_path))
    manifest = json.loads((VECTORS / "preprocess" / "manifest.json").read_text())
    assert len(manifest["cases"]) >= 3
    for case in manifest["cases"]:
        want = np.load(VECTORS / "preprocess" / case["pixel_values"])
        source = VECTORS / "preprocess" / case["source"]
        # A path, the file's bytes and a PIL image (EXIF-rotated and converted to RGB as load_image does:
        # rocket_small_exif6.jpg has orientation 6) all give HF's pixels.
        import PIL.Image
        for image in (str(source), source.read_bytes(), PIL.Image.open(source)):
            got = model.preprocess(image)
            assert got.shape == want.shape, case["source"]
            assert np.array_equal(got, want), (case["source"], type(image))  # exact, as the C++ tests require


def test_embed_shapes():
    model = perceiver.Model(str(FASHION))
    L, D = 0, 0
    latents = model.embed([str(CAT), str(CAT)], pool="latents")
    assert latents.ndim == 3 and latents.shape[0] == 2
    L, D = latents.shape[1], latents.shape[2]
    assert model.embed(str(CAT)).shape == (1, D)
    assert model.embed([str(CAT)], pool="decoder").shape == (1, D)
    assert np.allclose(model.embed(str(CAT), pool="mean")[0], latents[0].mean(axis=0), atol=1e-5)


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    model = perceiver.Model(str(FASHION))
    with pytest.raises(perceiver.Error, match="not-an-image.jpg"):
        model.classify(str(bad))
    with pytest.raises(perceiver.Error, match="missing.png"):
        model.classify(str(tmp_path / "missing.png"))
    with pytest.raises(perceiver.Error, match="nowhere"):
        perceiver.Model(str(tmp_path / "nowhere"))
    with pytest.raises(perceiver.Error, match="pin_threads 'sometimes'"):
        perceiver.Model(str(FASHION), pin_threads="sometimes")
    assert issubclass(perceiver.Error, Exception)


def test_pinned_and_unpinned_threads_give_the_same_logits():
    pixels = perceiver.Model(str(FASHION)).preprocess(str(CAT))
    pinned = perceiver.Model(str(FASHION), threads=0, pin_threads="on").logits(pixels)
    unpinned = perceiver.Model(str(FASHION), threads=0, pin_threads="off").logits(pixels)
    assert np.array_equal(pinned, unpinned)


def test_threads_share_a_model():
    import threading
    model = perceiver.Model(str(FASHION), threads=1)
    images = [str(p) for p in sorted((FASHION / "expected" / "images").iterdir())]
    want = [r[0]["label"] for r in model.classify(images, top_k=1)]
    results, errors = [None] * 4, []

    def work(slot):
        try:
            results[slot] = [r[0]["label"] for r in model.classify(images, top_k=1)]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [want] * 4
