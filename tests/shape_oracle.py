"""ONNX's own shape inference as an oracle for graft's `shape-infer` pass.

Usage: shape_oracle.py [--symbolic OUTDIR | --runtime] FILE...
Prints one JSON object: {file: {value name: [elem_type, dims or null]}} for the value_info that
onnx.shape_inference.infer_shapes(strict_mode=False, data_prop=True) produces after the model's own
value_info is dropped. A dim is an int (dim_value), a string (dim_param) or null (unknown; ONNX's
generated `unk__N` names count as unknown).

With --symbolic, each model's graph inputs first get symbolic dims (dim 0 -> "batch"; dim 1 of
rank-2 integer inputs and of rank-3 inputs -> "seq"), the result is saved under OUTDIR and its path
is given as "__file__" in that model's entry, so both sides infer from the same symbolic model.

With --runtime, the types are instead the actual element types and shapes of every node output
when ONNX Runtime runs the model (all optimizations off) on the inputs.npz beside it (random
inputs where there is none).
"""
import json
import os
import sys

import onnx
from onnx import shape_inference


def dims_of(tt):
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param and not d.dim_param.startswith("unk__"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def symbolize(model):
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims = tt.shape.dim
        if len(dims) >= 1:
            dims[0].dim_param = "batch"
        if len(dims) == 3 or (len(dims) == 2 and tt.elem_type in (6, 7)):
            dims[1].dim_param = "seq"


def infer(path, model=None):
    if model is None:
        model = onnx.load(path)
    del model.graph.value_info[:]
    model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    res = {}
    for vi in model.graph.value_info:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        res[vi.name] = [tt.elem_type, dims_of(tt)]
    return res


def inputs_for(path):
    d = os.path.dirname(path)
    exporter = "dynamo" if ".dynamo." in os.path.basename(path) else "ts"
    for cand in (f"inputs.{exporter}.npz", "inputs.npz"):
        p = os.path.join(d, cand)
        if os.path.exists(p):
            return p
    return None


def runtime(path):
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for n in model.graph.node:
        for o in n.output:
            if o and o not in have:
                model.graph.output.append(helper.make_empty_tensor_value_info(o))
                have.add(o)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {}
    npz = inputs_for(path)
    data = np.load(npz) if npz else {}
    rng = np.random.default_rng(0)
    for i in sess.get_inputs():
        if i.name in data:
            feeds[i.name] = data[i.name]
            continue
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        if "int" in i.type:
            dt = np.int64 if "int64" in i.type else np.int32
            feeds[i.name] = rng.integers(0, 4, size=shape).astype(dt)
        elif "bool" in i.type:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    res = {}
    for n, v in zip(names, sess.run(None, feeds)):
        v = np.asarray(v)
        res[n] = [int(helper.np_dtype_to_tensor_dtype(v.dtype)), [int(x) for x in v.shape]]
    return res


def main():
    args = sys.argv[1:]
    outdir = None
    if args[:1] == ["--symbolic"]:
        outdir = args[1]
        args = args[2:]
        os.makedirs(outdir, exist_ok=True)
    run_models = args[:1] == ["--runtime"]
    if run_models:
        args = args[1:]
    out = {}
    for i, p in enumerate(args):
        try:
            if run_models:
                out[p] = runtime(p)
                continue
            if outdir is None:
                out[p] = infer(p)
                continue
            model = onnx.load(p)
            symbolize(model)
            sym = os.path.join(outdir, f"{i:03d}_" + os.path.basename(p))
            onnx.save(model, sym)
            res = infer(sym, onnx.load(sym))
            res["__file__"] = sym
            out[p] = res
        except Exception as e:  # noqa: BLE001 - reported to the Rust side
            out[p] = {"__error__": str(e)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
