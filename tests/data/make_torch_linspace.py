"""Writes torch.linspace outputs (float32, CPU) used by tests/test_model.cpp to check linspace_f32 bit for bit.
Run with Debian's /usr/bin/python3 and python3-torch (1.13): /usr/bin/python3 tests/data/make_torch_linspace.py"""
import os
import numpy as np
import torch

CASES = [(-1.0, 1.0, 55), (-1.0, 1.0, 224), (-1.0, 1.0, 16), (-1.0, 1.0, 12), (-1.0, 1.0, 7), (-1.0, 1.0, 33),
         (1.0, 28.0, 64), (1.0, 112.0, 64)]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_linspace")
os.makedirs(out, exist_ok=True)
for start, end, steps in CASES:
    np.save(os.path.join(out, f"linspace_{start:g}_{end:g}_{steps}.npy"),
            torch.linspace(start, end, steps, dtype=torch.float32).numpy())
print("torch", torch.__version__, "wrote", len(CASES), "files to", out)
