#!/usr/bin/python3
"""ONNX Runtime's dynamic int8 quantisation of an ONNX graph: the anchor for perceiver.cpp's --precision int8.

  /usr/bin/python3 bench/ort_quantize.py IN.onnx OUT.onnx [--per-channel] [--check] [--threads 2]

With the Python `onnxruntime` package, this is onnxruntime.quantization.quantize_dynamic(weight_type=QInt8,
op_types_to_quantize=["MatMul"]). Without it (Debian has only onnx; ONNX Runtime here is the node package, which
cannot quantise), the script applies the same rewrite itself with onnx's Python API, reproducing what
quantize_dynamic does by default to a MatMul whose B is an initializer, in its QOperator (IntegerOps) form
(onnxruntime/python/tools/quantization: quantize.py, onnx_quantizer.py, operators/matmul.py, quant_utils.py):

  A (float)  -> DynamicQuantizeLinear -> A_q (uint8, per tensor, zero point), A_scale   [once per tensor A]
  B (float initializer) -> B_q int8, symmetric: zero point 0, scale = max|B| / 127 (float64 2 max|B| / 254, stored
                           as float32), B_q = clip(round_half_even(B / scale), -128, 127) in float32;
                           per tensor, or per column of B (axis -1) with --per-channel; reduce_range off
                           (quantize_dynamic's default: reduce_range=False, WeightSymmetric for QInt8)
  MatMulInteger(A_q, B_q, A_zp, B_zp) -> Cast(float) -> Mul(., A_scale * B_scale) -> the MatMul's output
  (a following bias Add is untouched). MatMuls whose B is not an initializer (attention's QK^T and PV) stay
  fp32, as with quantize_dynamic's MatMulConstBOnly=True default; each weight is quantised once however many
  MatMuls share it.

Both paths first drop Identity nodes that only forward an initializer: torch's exporter emits one for every
further use of a shared weight (the Perceiver's self-attention layers are applied num_blocks times), and
quantize_dynamic recognises B only among the initializers, so on the raw graph it would leave those MatMuls
(7/8 of the full-size model's self-attention work) in fp32. ORT's recommended pre-processing
(quant_pre_process: its basic graph optimisations eliminate Identity nodes) has the same effect.

Where this differs from quantize_dynamic's defaults: the stem Conv is left fp32 here (quantize_dynamic would make
it a ConvInteger; perceiver.cpp's int8 also keeps the conv stem in fp32, and it is 0.06% of the FLOPs); Gather
and Transpose, which it also lists, change nothing in these graphs. The weight arithmetic follows the tool's
current source (quant_utils.compute_scale_zp, quantize_nparray); older ORT releases may have used other ranges.
DynamicQuantizeLinear and the integer products are ONNX Runtime's own kernels at run time (its graph optimiser
fuses the pattern, DynamicQuantizeMatMul, as it does for a graph from quantize_dynamic).

--check runs both graphs on one random input (values in [-2, 2]) with ONNX Runtime (the Python package if
importable, else node bench/ort_bench.js) and prints the cosine between their outputs.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def drop_initializer_identities(model):
    """Consumers of Identity(initializer) read the initializer itself; returns how many Identity nodes went."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in graph_outputs}
    nodes = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del g.node[:]
    g.node.extend(nodes)
    return len(alias)


def quantize_weight(w, per_channel):
    """int8 weights, zero points and float32 scales as ORT's quant_utils computes them (symmetric, qmin/qmax
    -127/127; per tensor, or per index of the last axis)."""
    absmax = np.abs(w).max(axis=tuple(range(w.ndim - 1))) if per_channel else np.abs(w).max()
    scale = (np.float64(2) * absmax.astype(np.float64) / 254.0).astype(np.float32)  # (rmax - rmin) / (qmax - qmin)
    scale = np.where(scale < np.finfo(np.float32).tiny, np.float32(1), scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -128, 127).astype(np.int8)
    return q, np.zeros(scale.shape, np.int8), scale


def quantize_matmuls(model, per_channel):
    """Rewrites every MatMul with an initializer B (float32) as ORT's MatMulInteger pattern, in place."""
    g = model.graph
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 11:
        sys.exit("ort_quantize: opset >= 11 needed (DynamicQuantizeLinear)")
    inits = {t.name: t for t in g.initializer}
    new_inits, quantized_weights, quantized_inputs, nodes = [], set(), set(), []
    count = 0
    for n in g.node:
        b = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        # A constant A too (a product of two constants, which torch's export folds) is left as it is.
        if b is None or b.data_type != TensorProto.FLOAT or n.input[0] in inits:
            nodes.append(n)
            continue
        a, y, name = n.input[0], n.output[0], n.name or n.output[0]
        if b.name not in quantized_weights:
            q, zp, scale = quantize_weight(numpy_helper.to_array(b), per_channel)
            new_inits += [numpy_helper.from_array(q, b.name + "_quantized"),
                          numpy_helper.from_array(zp, b.name + "_zero_point"),
                          numpy_helper.from_array(scale, b.name + "_scale")]
            quantized_weights.add(b.name)
        if a not in quantized_inputs:
            nodes.append(helper.make_node("DynamicQuantizeLinear", [a], [a + "_quantized", a + "_scale",
                                                                          a + "_zero_point"], a + "_QuantizeLinear"))
            quantized_inputs.add(a)
        nodes += [
            helper.make_node("MatMulInteger", [a + "_quantized", b.name + "_quantized", a + "_zero_point",
                                               b.name + "_zero_point"], [y + "_output_quantized"], name + "_quant"),
            helper.make_node("Cast", [y + "_output_quantized"], [y + "_output_quantized_cast_output"],
                             y + "_output_quantized_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [a + "_scale", b.name + "_scale"], [name + "_quant_scales_mul:0"],
                             name + "_quant_scales_mul"),
            helper.make_node("Mul", [y + "_output_quantized_cast_output", name + "_quant_scales_mul:0"], [y],
                             name + "_quant_output_scale_mul"),
        ]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for node in g.node for i in node.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]  # the fp32 weights now unused go, as ORT removes them
    del g.initializer[:]
    g.initializer.extend(kept)
    return count, len(quantized_weights)


def run_ort(path, x, threads):
    """The graph's first output on x, through ONNX Runtime (Python package, else node bench/ort_bench.js)."""
    try:
        import onnxruntime as ort
    except ImportError:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "x.npy"), x)
            subprocess.run(["node", os.path.join(HERE, "ort_bench.js"), path, "--threads", str(threads),
                            "--batch", str(x.shape[0]), "--inputs", os.path.join(tmp, "x.npy"),
                            "--logits-out", os.path.join(tmp, "y.npy")], check=True, stdout=subprocess.DEVNULL)
            return np.load(os.path.join(tmp, "y.npy"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check(fp32_path, int8_path, threads):
    dims = onnx.load(fp32_path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    x = np.random.default_rng(0).uniform(-2, 2, shape).astype(np.float32)
    want, got = run_ort(fp32_path, x, threads), run_ort(int8_path, x, threads)
    want, got = want.reshape(len(x), -1).astype(np.float64), got.reshape(len(x), -1).astype(np.float64)
    cos = (want * got).sum(1) / np.sqrt((want * want).sum(1) * (got * got).sum(1))
    same = (want.argmax(1) == got.argmax(1)).mean()
    print(f"check: int8 vs fp32 output on a random input {shape}: cosine min {cos.min():.6f} mean {cos.mean():.6f}, "
          f"same top-1 {same:.0%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--per-channel", action="store_true", help="weights per column of B instead of per tensor")
    ap.add_argument("--check", action="store_true", help="run both graphs once and print the outputs' cosine")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for --check")
    args = ap.parse_args()

    model = onnx.load(args.input)
    dropped = drop_initializer_identities(model)
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        matmuls, weights = quantize_matmuls(model, args.per_channel)
        onnx.checker.check_model(model)
        tmp = args.output + ".incomplete"
        onnx.save(model, tmp)
        os.replace(tmp, args.output)
        print(f"wrote {args.output}: {matmuls} MatMuls -> MatMulInteger ({weights} weights, int8 "
              f"{'per channel' if args.per_channel else 'per tensor'}), {dropped} Identity nodes dropped "
              f"(onnx {onnx.__version__}, ORT's quantize_dynamic rewrite reproduced)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pre = os.path.join(tmp, "pre.onnx")
            onnx.save(model, pre)
            quantize_dynamic(pre, args.output, op_types_to_quantize=["MatMul"], per_channel=args.per_channel,
                             weight_type=QuantType.QInt8)
        print(f"wrote {args.output} with onnxruntime.quantization.quantize_dynamic "
              f"(per_channel={args.per_channel}), {dropped} Identity nodes dropped first")
    if args.check:
        check(args.input, args.output, args.threads)


if __name__ == "__main__":
    main()
