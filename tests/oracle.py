"""The Python side of graft's tests: ONNX Runtime and onnx.checker as oracles we did not write.

Usage (each prints one JSON object on stdout):
  oracle.py check FILE...                 onnx.checker.check_model(full_check=True) on each file
  oracle.py compare A B [--inputs NPZ] [--exact] [--rtol R]
                                          run A and B in ONNX Runtime on the same inputs, compare
  oracle.py compare-many JOBS.json        run `compare` for each {"a","b","inputs","rtol","exact"} in
                                          a JSON list; answers a list in the same order
  oracle.py parse-text FILE...            onnx.parser.parse_model on each text file
  oracle.py edge-cases DIR                write hand-made edge-case models into DIR
  oracle.py compare-npz MODEL INPUTS EXPECTED [--rtol R]
                                          run MODEL in ONNX Runtime on INPUTS (npz) and compare each
                                          output with the array of that name in EXPECTED (npz)
                                          (EXPECTED may be a folder of <output>.npy files)
  oracle.py compare-npz --many JOBS.json  the same for each {"model","inputs","expected","rtol"} in a
                                          JSON list; answers a list in the same order
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def check(paths):
    out = {}
    for p in paths:
        try:
            onnx.checker.check_model(p, full_check=True)
            out[p] = "ok"
        except Exception as e:  # noqa: BLE001 - report every failure as text
            out[p] = f"error: {e}"
    return out


def _np_dtype(elem):
    return helper.tensor_dtype_to_np_dtype(elem)


def random_inputs(sess, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        t = i.type
        if "int64" in t or "int32" in t:
            dt = np.int64 if "int64" in t else np.int32
            feeds[i.name] = rng.integers(0, 4, size=shape).astype(dt)
        elif "bool" in t:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif "float16" in t:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float16)
        elif "double" in t:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def compare(a, b, inputs=None, exact=False, rtol=1e-4):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sa = ort.InferenceSession(a, so, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(b, so, providers=["CPUExecutionProvider"])
    if inputs:
        data = np.load(inputs)
        feeds = {i.name: data[i.name] for i in sa.get_inputs() if i.name in data}
        missing = [i.name for i in sa.get_inputs() if i.name not in feeds]
        if missing:
            feeds.update({k: v for k, v in random_inputs(sa).items() if k in missing})
    else:
        feeds = random_inputs(sa)
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    if names_a != names_b:
        return {"ok": False, "error": f"output names differ: {names_a} vs {names_b}"}
    ra = sa.run(None, feeds)
    rb = sb.run(None, feeds)
    outputs = {}
    ok = True
    for n, x, y in zip(names_a, ra, rb):
        x = np.asarray(x)
        y = np.asarray(y)
        rec = {"shape_a": list(x.shape), "shape_b": list(y.shape)}
        if x.shape != y.shape or x.dtype != y.dtype:
            rec["error"] = f"shape/dtype differ: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
            ok = False
        elif exact:
            same = x.tobytes() == y.tobytes()
            rec["bit_identical"] = same
            ok &= same
        else:
            xf = x.astype(np.float64)
            yf = y.astype(np.float64)
            denom = max(np.linalg.norm(xf), 1e-30)
            rel = float(np.linalg.norm(xf - yf) / denom)
            mx = float(np.max(np.abs(xf - yf))) if xf.size else 0.0
            rec.update({"rel_fro": rel, "max_abs": mx})
            ok &= rel <= rtol
        outputs[n] = rec
    return {"ok": bool(ok), "outputs": outputs}


def parse_text(paths):
    out = {}
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                onnx.parser.parse_model(f.read())
            out[p] = "ok"
        except Exception as e:  # noqa: BLE001
            out[p] = f"error: {e}"
    return out


def _save(model, path, **kw):
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path, **kw)


def edge_cases(d):
    """Hand-made models covering what the round trip must keep."""
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    made = []

    # 1. If with subgraphs reading an outer value, plus metadata and doc strings.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    w = numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "w")
    then_g = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["t_out"])], "then_b", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["e_out"])], "else_b", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g,
                            name="branch", doc_string="chooses a branch")
    g = helper.make_graph([node], "subgraphs", [x, c], [y], [w], doc_string="graph doc")
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="graft-tests",
                          doc_string="model doc")
    helper.set_model_props(m, {"author": "graft", "purpose": "edge case"})
    _save(m, os.path.join(d, "subgraph_if.onnx"))
    made.append("subgraph_if.onnx")

    # 2. float16 weights (raw_data) and a bfloat16 cast path.
    xh = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])
    yh = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 5])
    wh = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float16), "w16")
    bh = numpy_helper.from_array(rng.standard_normal((5,)).astype(np.float16), "b16")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w16"], ["mm"]),
                           helper.make_node("Add", ["mm", "b16"], ["y"])],
                          "fp16", [xh], [yh], [wh, bh])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    _save(m, os.path.join(d, "fp16.onnx"))
    made.append("fp16.onnx")

    # 3. External data (two tensors in one file, one embedded), typed-field initializers.
    xe = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])
    ye = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 64])
    w1 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w2")
    s = helper.make_tensor("s", TensorProto.FLOAT, [1], [0.5])  # float_data, not raw
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]),
                           helper.make_node("MatMul", ["h", "w2"], ["h2"]),
                           helper.make_node("Mul", ["h2", "s"], ["y"])],
                          "external", [xe], [ye], [w1, w2, s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    ext_dir = os.path.join(d, "external")
    os.makedirs(ext_dir, exist_ok=True)
    onnx.save(m, os.path.join(ext_dir, "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    onnx.checker.check_model(os.path.join(ext_dir, "model.onnx"), full_check=True)
    made.append("external/model.onnx")

    # 4. Old IR (3, initializers listed as inputs), Identity and Dropout, unused initializer.
    xo = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    wo = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    wt = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]),
                           helper.make_node("Relu", ["m"], ["y"])],
                          "old_ir", [xo, wo], [yo], [wt])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    _save(m, os.path.join(d, "ir3.onnx"))
    made.append("ir3.onnx")

    # 5. A model-local function and a custom-domain opset import.
    fn = helper.make_function("custom.fns", "Scale2", ["a"], ["b"],
                              [helper.make_node("Constant", [], ["two"], value_float=2.0),
                               helper.make_node("Mul", ["a", "two"], ["b"])],
                              [helper.make_opsetid("", 18)])
    xf = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    yf = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Scale2", ["x"], ["y"], domain="custom.fns")],
                          "with_function", [xf], [yf])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("custom.fns", 1)], functions=[fn])
    _save(m, os.path.join(d, "function.onnx"))
    made.append("function.onnx")
    # 6. A sparse initializer and initializers of exotic element types (bfloat16, float8,
    #    int4, uint4) that the graph keeps but does not compute with.
    xs = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    ys = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    dense_shape = [2, 3]
    values = numpy_helper.from_array(np.array([1.5, -2.0], dtype=np.float32), "sp")
    indices = numpy_helper.from_array(np.array([1, 5], dtype=np.int64), "sp_indices")
    sparse = helper.make_sparse_tensor(values, indices, dense_shape)
    bf = helper.make_tensor("bf16_w", TensorProto.BFLOAT16, [4], [0x3F80, 0x4000, 0xBF80, 0x0000])
    f8 = helper.make_tensor("f8_w", TensorProto.FLOAT8E4M3FN, [3], [0x38, 0x40, 0xB8])
    i4 = helper.make_tensor("i4_w", TensorProto.INT4, [3], [1, -2, 7])
    u4 = helper.make_tensor("u4_w", TensorProto.UINT4, [2], [3, 15])
    b = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "b")
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "exotic", [xs], [ys],
                          [b, bf, f8, i4, u4], sparse_initializer=[sparse])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    _save(m, os.path.join(d, "sparse_and_exotic.onnx"))
    made.append("sparse_and_exotic.onnx")
    return {"made": made}


class _Files(dict):
    @property
    def files(self):
        return list(self.keys())


def compare_npz(model, inputs, expected, rtol=1e-4):
    """Runs `model` on the arrays of `inputs` and compares every output with `expected[name]`
    (relative Frobenius error <= rtol). An output missing from `expected`, or an expected array
    the model does not produce, is a failure."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    data = np.load(inputs)
    missing = [i.name for i in sess.get_inputs() if i.name not in data]
    if missing:
        return {"ok": False, "error": f"inputs missing from {inputs}: {missing}"}
    feeds = {i.name: data[i.name] for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    if os.path.isdir(expected):
        # a folder of <output name>.npy files, names sanitised as `graft run --output-dir` does
        def file_of(n):
            return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in n)
        want = {}
        for n in names:
            p = os.path.join(expected, file_of(n) + ".npy")
            if os.path.exists(p):
                want[n] = np.load(p)
        want = _Files(want)
    else:
        want = np.load(expected)
    if sorted(names) != sorted(want.files):
        return {"ok": False, "error": f"outputs {names} vs expected {sorted(want.files)}"}
    ok = True
    outputs = {}
    for n, y in zip(names, sess.run(None, feeds)):
        x = np.asarray(want[n]).astype(np.float64)
        y = np.asarray(y)
        rec = {"shape": list(y.shape)}
        if x.shape != y.shape:
            rec["error"] = f"shape {list(y.shape)} vs expected {list(x.shape)}"
            ok = False
        else:
            yf = y.astype(np.float64)
            rel = float(np.linalg.norm(yf - x) / max(np.linalg.norm(x), 1e-30))
            rec.update({"rel_fro": rel, "max_abs": float(np.max(np.abs(yf - x))) if x.size else 0.0})
            ok &= rel <= rtol
        outputs[n] = rec
    return {"ok": bool(ok), "outputs": outputs}


def main(argv):
    cmd = argv[1]
    if cmd == "check":
        res = check(argv[2:])
    elif cmd == "compare":
        a, b = argv[2], argv[3]
        rest = argv[4:]
        inputs = None
        exact = "--exact" in rest
        rtol = 1e-4
        if "--inputs" in rest:
            inputs = rest[rest.index("--inputs") + 1]
        if "--rtol" in rest:
            rtol = float(rest[rest.index("--rtol") + 1])
        res = compare(a, b, inputs, exact, rtol)
    elif cmd == "compare-many":
        with open(argv[2]) as f:
            jobs = json.load(f)
        res = []
        for j in jobs:
            try:
                res.append(compare(j["a"], j["b"], j.get("inputs"), j.get("exact", False),
                                   j.get("rtol", 1e-4)))
            except Exception as e:  # noqa: BLE001 - report every failure as text
                res.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    elif cmd == "parse-text":
        res = parse_text(argv[2:])
    elif cmd == "edge-cases":
        res = edge_cases(argv[2])
    elif cmd == "compare-npz":
        rest = argv[2:]
        if rest[0] == "--many":
            with open(rest[1]) as f:
                jobs = json.load(f)
            res = []
            for j in jobs:
                try:
                    res.append(compare_npz(j["model"], j["inputs"], j["expected"],
                                           j.get("rtol", 1e-4)))
                except Exception as e:  # noqa: BLE001 - report every failure as text
                    res.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            rtol = float(rest[rest.index("--rtol") + 1]) if "--rtol" in rest else 1e-4
            res = compare_npz(rest[0], rest[1], rest[2], rtol)
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv)
