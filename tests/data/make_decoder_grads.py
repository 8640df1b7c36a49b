#!/usr/bin/python3
"""Reference gradients for tests/test_train_grad.cpp, computed by PyTorch autograd in float64.

Builds (1) the classification decoder of HF's PerceiverForImageClassification* (trainable query -> cross-attention
PerceiverLayer with one head and query residual -> final linear -> softmax cross-entropy) and (2) a two-head
self-attention PerceiverLayer under a fixed random linear loss, with small random shapes, and saves inputs,
weights, loss and the gradient of every weight and input as .npy files under tests/data/decoder_grads/<case>/:
  p.<HF name>.npy  weights      g.<HF name>.npy  their gradients
  <input>.npy      inputs       g.<input>.npy    their gradients      loss.npy   the scalar loss

The layer is written here with torch.nn.functional (the same maths as modeling_perceiver.py's PerceiverLayer:
pre-LayerNorm attention, softmax(q k^T / sqrt(d_head)), output dense, query residual, pre-LayerNorm GELU MLP
with residual), so this needs only torch and numpy:
    apt-get install -y python3-torch python3-numpy && /usr/bin/python3 tests/data/make_decoder_grads.py
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decoder_grads")
EPS = 1e-5  # nn.LayerNorm default, which PerceiverLayer uses


def layer_params(prefix, q_dim, kv_dim, qk, v, hidden, cross, gen):
    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    a = prefix + "attention.self."
    p = {a + "layernorm1.weight": 1 + rnd(q_dim, scale=0.1), a + "layernorm1.bias": rnd(q_dim, scale=0.1)}
    if cross:
        p[a + "layernorm2.weight"] = 1 + rnd(kv_dim, scale=0.1)
        p[a + "layernorm2.bias"] = rnd(kv_dim, scale=0.1)
    kv_in = kv_dim if cross else q_dim
    p.update({
        a + "query.weight": rnd(qk, q_dim), a + "query.bias": rnd(qk, scale=0.1),
        a + "key.weight": rnd(qk, kv_in), a + "key.bias": rnd(qk, scale=0.1),
        a + "value.weight": rnd(v, kv_in), a + "value.bias": rnd(v, scale=0.1),
        prefix + "attention.output.dense.weight": rnd(q_dim, v),
        prefix + "attention.output.dense.bias": rnd(q_dim, scale=0.1),
        prefix + "layernorm.weight": 1 + rnd(q_dim, scale=0.1), prefix + "layernorm.bias": rnd(q_dim, scale=0.1),
        prefix + "mlp.dense1.weight": rnd(hidden, q_dim), prefix + "mlp.dense1.bias": rnd(hidden, scale=0.1),
        prefix + "mlp.dense2.weight": rnd(q_dim, hidden), prefix + "mlp.dense2.bias": rnd(q_dim, scale=0.1),
    })
    return p


def perceiver_layer(p, prefix, x, kv, heads, query_residual=True):
    """x: [B, nq, q_dim]; kv: [B, nk, kv_dim] or None (self-attention)."""
    a = prefix + "attention.self."
    xq = F.layer_norm(x, x.shape[-1:], p[a + "layernorm1.weight"], p[a + "layernorm1.bias"], EPS)
    if kv is None:
        kvn = xq
    else:
        kvn = F.layer_norm(kv, kv.shape[-1:], p[a + "layernorm2.weight"], p[a + "layernorm2.bias"], EPS)
    q = F.linear(xq, p[a + "query.weight"], p[a + "query.bias"])
    k = F.linear(kvn, p[a + "key.weight"], p[a + "key.bias"])
    v = F.linear(kvn, p[a + "value.weight"], p[a + "value.bias"])
    B, nq, _ = q.shape
    nk = k.shape[1]
    dqk, dv = q.shape[-1] // heads, v.shape[-1] // heads
    q = q.view(B, nq, heads, dqk).transpose(1, 2)
    k = k.view(B, nk, heads, dqk).transpose(1, 2)
    v = v.view(B, nk, heads, dv).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dqk), dim=-1)
    ctx = (probs @ v).transpose(1, 2).reshape(B, nq, heads * dv)
    out = F.linear(ctx, p[prefix + "attention.output.dense.weight"], p[prefix + "attention.output.dense.bias"])
    if query_residual:
        out = out + x
    h = F.layer_norm(out, out.shape[-1:], p[prefix + "layernorm.weight"], p[prefix + "layernorm.bias"], EPS)
    h = F.linear(h, p[prefix + "mlp.dense1.weight"], p[prefix + "mlp.dense1.bias"])
    h = F.gelu(h)  # exact erf form, as HF's "gelu"
    h = F.linear(h, p[prefix + "mlp.dense2.weight"], p[prefix + "mlp.dense2.bias"])
    return out + h


def save(case, arrays):
    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.remove(os.path.join(d, old))
    for name, value in arrays.items():
        np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(value))


def decoder_case(gen):
    B, L, D_kv, D, C = 3, 5, 6, 8, 4  # batch, latents, latent width, query width, classes
    dp = "perceiver.decoder.decoder."
    prefix = dp + "decoding_cross_attention."
    p = {dp + "output_position_encodings.position_embeddings": torch.randn(1, D, generator=gen,
                                                                             dtype=torch.float64) * 0.5}
    p.update(layer_params(prefix, D, D_kv, D, D, D, True, gen))
    p[dp + "final_layer.weight"] = torch.randn(C, D, generator=gen, dtype=torch.float64) * 0.3
    p[dp + "final_layer.bias"] = torch.randn(C, generator=gen, dtype=torch.float64) * 0.1
    for t in p.values():
        t.requires_grad_(True)
    latents = torch.randn(B, L, D_kv, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([1, 3, 0], dtype=torch.int64)
    query = p[dp + "output_position_encodings.position_embeddings"].unsqueeze(0).expand(B, 1, D)
    h = perceiver_layer(p, prefix, query, latents, heads=1)
    logits = F.linear(h[:, 0, :], p[dp + "final_layer.weight"], p[dp + "final_layer.bias"])
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    arrays = {"latents": latents.detach().numpy(), "labels": labels.numpy(), "loss": loss.detach().numpy(),
              "logits": logits.detach().numpy(), "g.latents": latents.grad.numpy()}
    for name, t in p.items():
        arrays["p." + name] = t.detach().numpy()
        arrays["g." + name] = t.grad.numpy()
    save("decoder", arrays)


def self_attention_case(gen):
    B, N, D, heads, hidden = 2, 4, 6, 2, 12
    prefix = "perceiver.encoder.self_attends.0."
    p = layer_params(prefix, D, D, D, D, hidden, False, gen)
    for t in p.values():
        t.requires_grad_(True)
    x = torch.randn(B, N, D, generator=gen, dtype=torch.float64).requires_grad_(True)
    r = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    out = perceiver_layer(p, prefix, x, None, heads=heads)
    loss = (out * r).sum()
    loss.backward()
    arrays = {"x": x.detach().numpy(), "r": r.numpy(), "loss": loss.detach().numpy(), "out": out.detach().numpy(),
              "g.x": x.grad.numpy()}
    for name, t in p.items():
        arrays["p." + name] = t.detach().numpy()
        arrays["g." + name] = t.grad.numpy()
    save("self_attention", arrays)


if __name__ == "__main__":
    gen = torch.Generator().manual_seed(20240607)
    decoder_case(gen)
    self_attention_case(gen)
    print("wrote", OUT)
