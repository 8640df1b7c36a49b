"""perceiver: Perceiver IO image classifiers (Hugging Face checkpoints) on the perceiver.cpp engine.

    import perceiver
    model = perceiver.Model("deepmind/vision-perceiver-conv")    # a directory or a hub repo id
    model.classify("cat.jpg")       # [{"label": "tabby, tabby cat", "score": 0.8...}, ...]

An image is a path (str / os.PathLike), encoded bytes (JPEG, PNG, WebP), a PIL.Image.Image, or a uint8 numpy
array HxWx3 (RGB), HxW (gray) or HxWx4 (RGBA, alpha dropped). Images are decoded and preprocessed exactly as
transformers' load_image + PerceiverImageProcessor do.

Threads: a Model may be shared by any number of Python threads. Decoding, preprocessing and forward passes run
with the GIL released, each call on a context of its own (from a small pool), so threads run in parallel; each
call uses the model's `threads` OpenMP threads (give N concurrent threads about cores / N each).

Errors raise perceiver.Error (an Exception) whose message names the file (or images[i]) and the problem; its
`kind` is the perceiver CLI's exit code for the failure (2 usage, 3 bad input, 4 model, 5 network).
"""

import json
import os

import numpy as np

from ._perceiver import Error, _Model, __version__

__all__ = ["Model", "Error", "__version__"]

_POOLS = ("mean", "latents", "decoder")
Error.kind = 1  # instances raised by the engine carry their own kind


def _error(message, kind):
    error = Error(message)
    error.kind = kind
    return error


def _image_spec(image, index):
    """One image -> (kind, object) for the engine: "path", "bytes" or "array" (uint8, rows contiguous)."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fsdecode(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise _error(f"images[{index}]: an array image must be uint8 HxW, HxWx3 or HxWx4, "
                         f"got {image.dtype} {list(image.shape)}", 3)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        pixel = image.shape[2] if image.ndim == 3 else 1
        if image.strides[-1] != 1 or (image.ndim == 3 and image.strides[1] != pixel) or image.strides[0] < 0:
            image = np.ascontiguousarray(image)
        return ("array", image)
    try:
        import PIL.Image
        import PIL.ImageOps
    except ImportError:  # no Pillow: nothing else can be an image
        PIL = None
    if PIL is not None and isinstance(image, PIL.Image.Image):
        # As transformers' load_image: EXIF orientation, then convert("RGB").
        rgb = PIL.ImageOps.exif_transpose(image).convert("RGB")
        return ("array", np.asarray(rgb, dtype=np.uint8))
    raise _error(f"images[{index}]: not an image (a path, bytes, a PIL.Image.Image or a uint8 numpy array), "
                 f"got {type(image).__name__}", 2)


def _is_single(images):
    if isinstance(images, (list, tuple)):
        return False
    return True


class Model:
    """A Perceiver IO image classifier.

    Model(dir_or_repo_id, precision="fp32", threads=0, revision=None, preprocess_defaults=False,
          batch_size=8, max_image_pixels=None)

    dir_or_repo_id: a directory with config.json (+ preprocessor_config.json) and model.safetensors or
    pytorch_model.bin, or a Hugging Face hub repo id ("org/name"), downloaded into the Hugging Face cache once
    (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN as in huggingface_hub). precision: "fp32" (HF within 1e-4), "bf16" or
    "int8". threads: OpenMP threads per call (0: all cores). revision: the hub revision ("main").
    The weights are loaded with the GIL released.
    """

    def __init__(self, dir_or_repo_id, precision="fp32", threads=0, revision=None, preprocess_defaults=False,
                 batch_size=8, max_image_pixels=None):
        self._model = _Model(os.fsdecode(dir_or_repo_id), str(precision), int(threads), revision or "",
                             bool(preprocess_defaults), int(max_image_pixels or 0))
        self.batch_size = int(batch_size)
        self.labels = list(self._model.labels)
        self.config = json.loads(self._model.config_json)
        self.info = self._model.info

    def __repr__(self):
        i = self.info
        return f"perceiver.Model({i['model_dir']!r}, {i['architecture']}, {i['num_labels']} labels, {i['precision']})"

    @property
    def num_labels(self):
        return len(self.labels)

    @property
    def image_size(self):
        """(height, width) the preprocessor outputs, or None without a preprocessor."""
        i = self.info
        return (i["image_height"], i["image_width"]) if i["has_preprocessor"] else None

    def logits(self, pixel_values):
        """pixel_values: float32 [B, 3, H, W] (as preprocess gives) -> float32 numpy [B, num_labels].

        A C-contiguous float32 array is read in place (no copy); anything else is converted first.
        The forward pass runs with the GIL released."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self._model.logits(pixels)

    def preprocess(self, image):
        """One image -> pixel_values float32 numpy [1, 3, H, W], exactly as PerceiverImageProcessor.

        Decoding and preprocessing run with the GIL released."""
        return self._model.preprocess(_image_spec(image, 0))

    def image_logits(self, images):
        """Images (one or a list) -> logits float32 numpy [N, num_labels] (decode, preprocess and forward
        with the GIL released, batch_size images per pass)."""
        batch = [images] if _is_single(images) else list(images)
        specs = [_image_spec(image, i) for i, image in enumerate(batch)]
        return self._model.run(specs, "logits", self.batch_size)

    def classify(self, images, top_k=5):
        """The transformers image-classification pipeline's output: for one image a list of
        {"label": str, "score": float} (most probable first, softmax scores); for a list of images a list of
        such lists. Decoding, preprocessing and forward passes run with the GIL released."""
        single = _is_single(images)
        logits = self.image_logits(images)
        top = self._model.top_k(logits, max(1, int(top_k)))
        results = [[{"label": self.labels[i], "score": float(p)} for i, p in row] for row in top]
        return results[0] if single else results

    def embed(self, images, pool="mean"):
        """Features of images: pool "mean" (mean of the encoder latents) -> [N, d_latents]; "latents" -> [N,
        num_latents, d_latents]; "decoder" (the decoder's output before its final linear) -> [N, d_latents].
        Like preprocess and image_logits, a single image (not in a list) gives N = 1. Runs with the GIL
        released."""
        if pool not in _POOLS:
            raise _error(f"pool: {pool!r} is not one of {', '.join(map(repr, _POOLS))}", 2)
        batch = [images] if _is_single(images) else list(images)
        specs = [_image_spec(image, i) for i, image in enumerate(batch)]
        return self._model.run(specs, pool, self.batch_size)
