#!/usr/bin/env python3
"""Prepare graft's corpus models for wonnx_compare.

wonnx 0.5.1 needs a static shape for EVERY tensor in the graph (graph.value_info), and the
TorchScript exports carry none.  This script, for each models/<case>/{unmerged,merged}.ts.onnx:
  * runs onnx.shape_inference.infer_shapes (strict, data_prop) and writes the result to
    OUT/models/<case>/<file>   (the original file is untouched),
  * extracts inputs.npz / expected.npz to OUT/inputs/<case>/<name>.npy and
    OUT/inputs/<case>/expected/<name>.npy.

With --compat it additionally writes OUT/models_compat/<case>/<file> with two semantics-preserving
rewrites for wonnx 0.5.1 limitations (everything else is left to wonnx and reported as its error):
  * Gemm with transB=1 and a constant B  ->  B transposed offline, transB=0
    (wonnx: "Gemm ... with transA/transB/broadcast not equal to zero" is unimplemented);
  * BatchNormalization on a rank-2 input ->  Mul(scale) + Add(shift) with folded constants
    (wonnx: BatchNormalization only for rank 3/4 inputs);
  * Conv without a bias input        ->  explicit all-zero bias initializer
    (wonnx 0.5.1 silently computes WRONG outputs for bias-less Conv: e.g. resnet_bn unmerged
     max|diff| 0.144 and cnn_conv_lora unmerged 0.0027 vs expected.npz without this rewrite).

usage: prepare.py [--models /work/main/models] [--out /work/scratch/wonnx_prep] [--compat]
"""
import argparse, glob, os, sys
import numpy as np
import onnx
from onnx import helper, numpy_helper

ap = argparse.ArgumentParser()
ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "../../../models"))
ap.add_argument("--out", default="/work/scratch/wonnx_prep")
ap.add_argument("--compat", action="store_true")
a = ap.parse_args()


def infer(m):
    return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)


def compat(m):
    """Rewrite a shape-inferred model around wonnx 0.5.1 gaps; returns (model, list of rewrites)."""
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input)}

    def const(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    done, new_nodes, new_inits = [], [], []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm" and attrs.get("transB", 0) == 1 and const(n.input[1]) is not None:
            bt = np.ascontiguousarray(const(n.input[1]).T)
            nm = n.input[1] + "__wonnx_T"
            new_inits.append(numpy_helper.from_array(bt, nm))
            n.input[1] = nm
            for a_ in n.attribute:
                if a_.name == "transB":
                    a_.i = 0
            done.append(f"Gemm transB {n.name}")
        elif n.op_type == "Conv" and len(n.input) < 3 and const(n.input[1]) is not None:
            nm = (n.name or n.output[0]) + "__wonnx_zero_bias"
            new_inits.append(numpy_helper.from_array(
                np.zeros(const(n.input[1]).shape[0], np.float32), nm))
            n.input.append(nm)
            done.append(f"Conv zero bias {n.name}")
        elif (n.op_type == "BatchNormalization" and len(shapes.get(n.input[0], [])) == 2
              and all(const(i) is not None for i in n.input[1:5])):
            gam, bet, mu, var = (const(i).astype(np.float32) for i in n.input[1:5])
            eps = attrs.get("epsilon", 1e-5)
            sc = gam / np.sqrt(var + eps)
            sh = bet - mu * sc
            sn, hn, mid = n.name + "__scale", n.name + "__shift", n.output[0] + "__scaled"
            new_inits += [numpy_helper.from_array(sc.astype(np.float32), sn),
                          numpy_helper.from_array(sh.astype(np.float32), hn)]
            new_nodes.append((n, [helper.make_node("Mul", [n.input[0], sn], [mid], n.name + "__mul"),
                                  helper.make_node("Add", [mid, hn], [n.output[0]], n.name + "__add")]))
            done.append(f"BatchNormalization->Mul+Add {n.name}")
    for old, repl in new_nodes:
        i = list(g.node).index(old)
        g.node.remove(old)
        for k, r in enumerate(repl):
            g.node.insert(i + k, r)
    g.initializer.extend(new_inits)
    if done:
        del g.value_info[:]
        m = infer(m)
    return m, done


for d in sorted(glob.glob(os.path.join(a.models, "*/"))):
    case = os.path.basename(d.rstrip("/"))
    if not os.path.exists(os.path.join(d, "inputs.npz")):
        continue
    idir = os.path.join(a.out, "inputs", case)
    os.makedirs(os.path.join(idir, "expected"), exist_ok=True)
    z = np.load(os.path.join(d, "inputs.npz"))
    for k in z.files:
        np.save(os.path.join(idir, k + ".npy"), z[k])
    if os.path.exists(os.path.join(d, "expected.npz")):
        z = np.load(os.path.join(d, "expected.npz"))
        for k in z.files:
            np.save(os.path.join(idir, "expected", k + ".npy"), z[k].astype(np.float32))
    for f in ("unmerged.ts.onnx", "merged.ts.onnx"):
        src = os.path.join(d, f)
        if not os.path.exists(src):
            continue
        mdir = os.path.join(a.out, "models", case)
        os.makedirs(mdir, exist_ok=True)
        m = onnx.load(src)
        try:
            m = infer(m)
        except Exception as e:  # keep going; wonnx will then report the missing shapes
            print(f"{case}/{f}: shape inference failed: {e}", file=sys.stderr)
        g = m.graph
        known = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)} | {i.name for i in g.initializer}
        missing = [o for n in g.node for o in n.output if o and o not in known]
        onnx.save(m, os.path.join(mdir, f))
        print(f"{case}/{f}: value_info={len(g.value_info)} missing_shapes={len(missing)}")
        if a.compat:
            cdir = os.path.join(a.out, "models_compat", case)
            os.makedirs(cdir, exist_ok=True)
            mc, done = compat(m)
            onnx.save(mc, os.path.join(cdir, f))
            print(f"  compat: {done}")
