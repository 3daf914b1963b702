"""Builds the test models of tests/text_format.rs with onnx.helper (onnx 1.23).

Run from the repository root:  .venv/bin/python tests/text_models/make_models.py
Writes <name>.onnx next to this script and manifest.txt, one line per model:
    <file> <flags>
flags (comma separated, or '-'):
    graft-only   the text graft prints cannot be parsed by onnx.parser (a feature onnx's
                 syntax lacks); the Python parse check skips it
    no-onnx-print  onnx.printer.to_text output of this model does not parse with onnx.parser
                 (onnx prints '...' for some data); the reverse check skips it
The output is deterministic.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = []


def save(name, model, flags="-"):
    path = os.path.join(HERE, name + ".onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    MODELS.append((name + ".onnx", flags))


def vi(name, elem, shape):
    return h.make_tensor_value_info(name, elem, shape)


def model(graph, opsets=None, **kw):
    opsets = opsets or [h.make_opsetid("", 21)]
    m = h.make_model(graph, opset_imports=opsets, **kw)
    m.ir_version = 10
    return m


# 1. basic: full model header, names that need quoting, domains, empty optional inputs.
g = h.make_graph(
    [
        h.make_node("MatMul", ["input.1", "W"], ["mm"], name="/layer/MatMul"),
        h.make_node("Add", ["mm", "B"], ["add_out"], name="n1"),
        h.make_node("Clip", ["add_out", "", "maxv"], ["clip"], name="clip"),
        h.make_node("FusedGemm", ["clip", "W2"], ["y", ""], domain="com.microsoft", alpha=0.5),
        h.make_node("Relu", ["y"], ["float"], domain="ai.onnx"),
        h.make_node("Identity", ["float"], ["out"]),
    ],
    "main graph",
    [vi("input.1", T.FLOAT, ["batch", 4]), vi("unused", T.FLOAT, [None, "s q", 3])],
    [vi("out", T.FLOAT, ["batch", 4])],
    [
        nh.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 7, "W"),
        nh.from_array(np.array([0.1, -0.2, 1e-8, 3e38], dtype=np.float32), "B"),
        nh.from_array(np.array(6.0, dtype=np.float32), "maxv"),
        h.make_tensor("W2", T.FLOAT, [4, 4], [float(i) - 7.5 for i in range(16)]),
    ],
    value_info=[vi("mm", T.FLOAT, ["batch", 4]), vi("y", T.FLOAT, [])],
)
m = model(
    g,
    [h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)],
    producer_name="graft-tests",
    producer_version="1.0",
    doc_string='A "doc" with \\ and\nnewline',
)
m.domain = "ai.graft.test"
m.model_version = 7
h.set_model_props(m, {"author": "graft", "empty": "", "quote\"key": "v\\al"})
save("basic", m)

# 2. dtypes: value infos and small initializers of every element type, raw and typed.
f32 = np.array([1.5, -0.0, np.nan, np.inf, -np.inf, 1e-45, 3.4028235e38, -1 / 3], dtype=np.float32)
inits = [
    nh.from_array(f32, "f32_raw"),
    h.make_tensor("f32_typed", T.FLOAT, [8], f32.tolist()),
    nh.from_array(np.array([0.1, -1e300, 5e-324, np.nan], dtype=np.float64), "f64_raw"),
    h.make_tensor("f64_typed", T.DOUBLE, [2], [0.1, 2.0**60]),
    nh.from_array(np.array([1.5, -2.0, 65504.0, np.inf], dtype=np.float16), "f16_raw"),
    h.make_tensor("f16_typed", T.FLOAT16, [3], np.array([0.5, -0.0, 1e-4], dtype=np.float16)),
    h.make_tensor("bf16", T.BFLOAT16, [2], [1.0, -3.0]),
    h.make_tensor("bf16_raw", T.BFLOAT16, [2], b"\x80\x3f\x40\xc0", raw=True),
    h.make_tensor("f8e4m3fn", T.FLOAT8E4M3FN, [3], [1.0, -2.0, 448.0]),
    h.make_tensor("f8e4m3fnuz", T.FLOAT8E4M3FNUZ, [2], [1.0, 0.5]),
    h.make_tensor("f8e5m2", T.FLOAT8E5M2, [2], [1.0, -57344.0]),
    h.make_tensor("f8e5m2fnuz", T.FLOAT8E5M2FNUZ, [2], [1.0, 2.0]),
    h.make_tensor("f8e5m2_raw", T.FLOAT8E5M2, [2], b"\x3c\xc0", raw=True),
    h.make_tensor("f8e8m0", T.FLOAT8E8M0, [2], [1.0, 4.0]),
    nh.from_array(np.array([-128, 127], dtype=np.int8), "i8"),
    nh.from_array(np.array([0, 255], dtype=np.uint8), "u8"),
    nh.from_array(np.array([-32768, 7], dtype=np.int16), "i16"),
    nh.from_array(np.array([65535], dtype=np.uint16), "u16"),
    nh.from_array(np.array([-(2**31), 2**31 - 1], dtype=np.int32), "i32"),
    h.make_tensor("i32_typed", T.INT32, [2], [-5, 5]),
    nh.from_array(np.array([-(2**63), 2**63 - 1, 2**53 + 1], dtype=np.int64), "i64"),
    h.make_tensor("i64_typed", T.INT64, [2], [-(2**63), 9007199254740993]),
    nh.from_array(np.array([2**32 - 1], dtype=np.uint32), "u32"),
    nh.from_array(np.array([2**64 - 1, 0], dtype=np.uint64), "u64"),
    h.make_tensor("u64_typed", T.UINT64, [1], [2**64 - 1]),
    nh.from_array(np.array([True, False, True]), "b"),
    h.make_tensor("b_typed", T.BOOL, [2], [False, True]),
    h.make_tensor("s", T.STRING, [4], [b"plain", b'q"uote', b"back\\slash", "ünï\ncode".encode()]),
    h.make_tensor("empty", T.FLOAT, [0], []),
    h.make_tensor("scalar_i64", T.INT64, [], [42]),
]
dtype_vis = [
    vi("v_" + onnx.helper.tensor_dtype_to_string(t).split(".")[-1].lower(), t, [2])
    for t in sorted(T.DataType.values())
    if t != T.UNDEFINED
]
g = h.make_graph(
    [h.make_node("Identity", ["f32_raw"], ["y"])],
    "dtypes",
    [],
    [vi("y", T.FLOAT, [8])],
    inits,
    value_info=dtype_vis,
)
save("dtypes", model(g))

# 2b. complex, 4-, 2- and 6-bit types: onnx's printer prints '...' for their data.
g = h.make_graph(
    [h.make_node("Identity", ["c64_raw"], ["y"])],
    "rawmisc",
    [],
    [vi("y", T.COMPLEX64, [2])],
    [
        nh.from_array(np.array([1 + 2j, -3.5 - 0.25j], dtype=np.complex64), "c64_raw"),
        nh.from_array(np.array([1e-300 + 2j], dtype=np.complex128), "c128_raw"),
        h.make_tensor("u4_raw", T.UINT4, [3], np.array([1, 15, 3], dtype=np.uint8), raw=True),
        h.make_tensor("f6", T.FLOAT6E2M3, [5], b"\x01\x02\x03\x04", raw=True),
        h.make_tensor("f6_typed", T.FLOAT6E3M2, [3], [1.0, 2.0, -1.0]),
    h.make_tensor("i4", T.INT4, [5], [1, -2, 7, -8, 0]),
    h.make_tensor("u4", T.UINT4, [3], [1, 15, 3]),
    h.make_tensor("i4_raw", T.INT4, [3], np.array([1, -2, 7], dtype=np.int8), raw=True),
    h.make_tensor("f4", T.FLOAT4E2M1, [2], [1.0, -6.0]),
    h.make_tensor("i2", T.INT2, [4], [1, -2, 0, -1]),
    h.make_tensor("u2", T.UINT2, [3], [3, 2, 1]),
    h.make_tensor("c64", T.COMPLEX64, [2], [1 + 2j, -0.5j]),
    h.make_tensor("c128", T.COMPLEX128, [1], [1e300 - 1j]),
    ],
)
# onnx's printer prints an empty strings attribute as `strings = ]`
g.node.append(h.make_node("Custom", [], ["k"], domain="test.domain"))
g.node[-1].attribute.append(
    h.make_attribute("empty_strings", [], attr_type=h.AttributeProto.STRINGS)
)
save("rawmisc", model(g, [h.make_opsetid("", 21), h.make_opsetid("test.domain", 1)]), "no-onnx-print")

# 3. types: sequence, map, optional, sparse, scalar, unknown rank, symbolic / unknown dims.
g = h.make_graph(
    [h.make_node("Identity", ["x"], ["y"])],
    "types",
    [
        vi("x", T.FLOAT, None),
        vi("scalar", T.INT64, []),
        h.make_tensor_sequence_value_info("seq_x", T.FLOAT, ["n", None]),
        h.make_value_info(
            "map_x", h.make_map_type_proto(T.INT64, h.make_tensor_type_proto(T.FLOAT, [3]))
        ),
        h.make_value_info(
            "opt_x", h.make_optional_type_proto(h.make_tensor_type_proto(T.BOOL, []))
        ),
        h.make_value_info(
            "opt_seq",
            h.make_optional_type_proto(
                h.make_sequence_type_proto(h.make_tensor_type_proto(T.STRING, None))
            ),
        ),
        h.make_sparse_tensor_value_info("sp", T.FLOAT, [10, "k"]),
        h.make_value_info("untyped", onnx.TypeProto()),
        vi("zero_dims", T.UINT8, [0, 1, 0]),
    ],
    [vi("y", T.FLOAT, None)],
)
save("types", model(g))

# 4. subgraphs: If (nested), Loop, Scan, graphs with initializers and value infos.
c = nh.from_array(np.array([1.0], dtype=np.float32), "c")
inner = h.make_graph(
    [h.make_node("Neg", ["x"], ["z"])], "inner", [], [vi("z", T.FLOAT, [1])]
)
then_g = h.make_graph(
    [h.make_node("Add", ["x", "c"], ["t"], name="then_add")],
    "then_g",
    [],
    [vi("t", T.FLOAT, [1])],
    [c],
    value_info=[vi("c", T.FLOAT, [1])],
)
else_g = h.make_graph(
    [h.make_node("If", ["b"], ["e"], then_branch=inner, else_branch=inner, name="inner_if")],
    "else_g",
    [],
    [vi("e", T.FLOAT, [1])],
)
body = h.make_graph(
    [
        h.make_node("Identity", ["cond_in"], ["cond_out"]),
        h.make_node("Add", ["acc_in", "x"], ["acc_out"]),
        h.make_node("Identity", ["acc_out"], ["scan_out"]),
    ],
    "loop_body",
    [vi("iter", T.INT64, []), vi("cond_in", T.BOOL, []), vi("acc_in", T.FLOAT, [1])],
    [vi("cond_out", T.BOOL, []), vi("acc_out", T.FLOAT, [1]), vi("scan_out", T.FLOAT, [1])],
)
scan_body = h.make_graph(
    [h.make_node("Add", ["s_in", "elem"], ["s_out"]), h.make_node("Identity", ["s_out"], ["e_out"])],
    "scan_body",
    [vi("s_in", T.FLOAT, [2]), vi("elem", T.FLOAT, [2])],
    [vi("s_out", T.FLOAT, [2]), vi("e_out", T.FLOAT, [2])],
)
g = h.make_graph(
    [
        h.make_node("If", ["b"], ["y"], then_branch=then_g, else_branch=else_g, name="if0"),
        h.make_node("Loop", ["trip", "", "x"], ["acc", "scans"], body=body, name="loop0"),
        h.make_node("Scan", ["s0", "seq"], ["s_final", "s_all"], body=scan_body, num_scan_inputs=1),
    ],
    "subgraphs",
    [
        vi("b", T.BOOL, []),
        vi("x", T.FLOAT, [1]),
        vi("trip", T.INT64, []),
        vi("s0", T.FLOAT, [2]),
        vi("seq", T.FLOAT, ["T", 2]),
    ],
    [vi("y", T.FLOAT, [1]), vi("acc", T.FLOAT, [1]), vi("s_final", T.FLOAT, [2])],
)
save("subgraphs", model(g))

# 5. functions: attributes with defaults, attribute references, opsets, overloads, value infos.
fn = h.make_function(
    "local",
    "ScaledAdd",
    ["a", "b"],
    ["c"],
    [
        h.make_node("Constant", [], ["alpha_t"], value_float=1.0),
        h.make_node("Mul", ["a", "alpha_t"], ["t"]),
        h.make_node("Add", ["t", "b"], ["c"]),
    ],
    [h.make_opsetid("", 21)],
    attributes=["alpha"],
    attribute_protos=[h.make_attribute("beta", 2), h.make_attribute("names", ["x", "y"])],
    doc_string="Adds a scaled value.",
    value_info=[vi("a", T.FLOAT, ["N"]), vi("t", T.FLOAT, ["N"])],
)
fn.node[0].attribute[0].CopyFrom(h.make_attribute_ref("value_float", h.AttributeProto.FLOAT))
fn.node[0].attribute[0].ref_attr_name = "alpha"
h.set_metadata_props(fn, {"origin": "test"})
fn2 = h.make_function(
    "local",
    "ScaledAdd",
    ["a", "b"],
    ["c"],
    [h.make_node("Sub", ["a", "b"], ["c"])],
    [h.make_opsetid("", 21)],
    overload="sub",
)
fn3 = h.make_function(
    "local",
    "WithIf",
    ["p", "x"],
    ["r"],
    [h.make_node("If", ["p"], ["r"], then_branch=inner, else_branch=inner)],
    [h.make_opsetid("", 21)],
)
g = h.make_graph(
    [
        h.make_node("ScaledAdd", ["x", "x"], ["y1"], domain="local", alpha=0.5),
        h.make_node("ScaledAdd", ["y1", "x"], ["y2"], domain="local", name="ov"),
        h.make_node("WithIf", ["p", "y2"], ["y"], domain="local"),
    ],
    "functions",
    [vi("x", T.FLOAT, ["N"]), vi("p", T.BOOL, [])],
    [vi("y", T.FLOAT, [1])],
)
g.node[1].overload = "sub"
m = model(g, [h.make_opsetid("", 21), h.make_opsetid("local", 1)], functions=[fn, fn2, fn3])
save("functions", m)

# 6. attributes of every type, odd strings, special floats.
sp_vals = h.make_tensor("spv", T.FLOAT, [2], [1.0, 2.0])
sp_idx = h.make_tensor("spi", T.INT64, [2], [0, 5])
g = h.make_graph(
    [
        h.make_node(
            "Custom",
            ["x"],
            ["y"],
            domain="test.domain",
            i=-(2**63),
            f=float("nan"),
            f_inf=float("-inf"),
            f_neg0=-0.0,
            f_small=1e-40,
            f_round=0.1,
            s='a "quoted" \\ string\nwith newline',
            s_empty="",
            ii=[1, -2, 2**62],
            ff=[0.5, 1.0, float("inf")],
            ss=["a", "", "c,d"],
            t=nh.from_array(np.array([[1, 2], [3, 4]], dtype=np.int32), "named_t"),
            t_unnamed=h.make_tensor("", T.FLOAT, [], [2.5]),
            ts=[nh.from_array(np.array([1, 2], dtype=np.int64), "nm"), h.make_tensor("", T.BOOL, [1], [True])],
            tp=h.make_tensor_type_proto(T.FLOAT, ["N", 2]),
            tps=[h.make_sequence_type_proto(h.make_tensor_type_proto(T.INT64, None)), h.make_tensor_type_proto(T.FLOAT16, [])],
        ),
        h.make_node("Constant", [], ["k"], value_ints=[1, 2, 3], name="const"),
        h.make_node("Constant", [], ["k2"], value_string="str"),
        h.make_node("Constant", [], ["k3"], value=h.make_tensor("", T.STRING, [2], [b"a", b"b"])),
    ],
    "attrs",
    [vi("x", T.FLOAT, [2])],
    [vi("y", T.FLOAT, [2])],
)
empty_ints = h.make_attribute("empty_ints", [], attr_type=h.AttributeProto.INTS)
empty_floats = h.make_attribute("empty_floats", [], attr_type=h.AttributeProto.FLOATS)
g.node[0].attribute.extend([empty_ints, empty_floats])
save("attrs", model(g, [h.make_opsetid("", 21), h.make_opsetid("test.domain", 1)]))

# 6b. attribute lists onnx.parser drops (graphs, tensors, type_protos) and sparse tensors.
g = h.make_graph(
    [
        h.make_node("Custom", ["x"], ["y"], domain="test.domain", gs=[inner, inner], s_bytes=b"\xff\x00binary"),
        h.make_node("Constant", [], ["sp"], sparse_value=h.make_sparse_tensor(sp_vals, sp_idx, [2, 3])),
    ],
    "lists",
    [vi("x", T.FLOAT, [2])],
    [vi("y", T.FLOAT, [2])],
)
save("graft_only", model(g, [h.make_opsetid("", 21), h.make_opsetid("test.domain", 1)]), "graft-only")

# 7. annotations: doc strings and metadata on nodes and graphs (onnx syntax has no place).
n = h.make_node("Relu", ["x"], ["y"], name="relu", doc_string="relu doc\nline 2")
h.set_metadata_props(n, {"pkg.torch.onnx.stack_trace": 'File "a.py", line 1', "ns": "relu: Relu"})
n2 = h.make_node("If", ["b"], ["z"], then_branch=inner, else_branch=inner, doc_string="if doc")
sub = h.make_graph(
    [h.make_node("Neg", ["x"], ["z"], doc_string="inner doc")],
    "sub",
    [],
    [vi("z", T.FLOAT, [1])],
    doc_string="subgraph doc",
)
n3 = h.make_node("If", ["b"], ["w"], then_branch=sub, else_branch=inner)
g = h.make_graph(
    [n, n2, n3],
    "annotated",
    [vi("x", T.FLOAT, [1]), vi("b", T.BOOL, [])],
    [vi("y", T.FLOAT, [1])],
    doc_string="graph doc with \\x41 escape-looking text",
)
h.set_metadata_props(g, {"k": "v\r\n"})
save("annotations", model(g))

# 8. large: initializers and constants above the summary limit, and external data.
rng = np.random.default_rng(0)
big = rng.standard_normal((64, 32)).astype(np.float32)
ext = T(name="ext_w", data_type=T.FLOAT, dims=[1024, 1024])
for k, v in [("location", "weights.bin"), ("offset", "4096"), ("length", "4194304")]:
    ext.external_data.add(key=k, value=v)
ext.data_location = T.EXTERNAL
g = h.make_graph(
    [
        h.make_node("MatMul", ["x", "big_w"], ["h"]),
        h.make_node("Constant", [], ["kc"], value=nh.from_array(np.arange(100, dtype=np.int64), "kc_v")),
        h.make_node("Add", ["h", "half_b"], ["y"]),
        h.make_node("Identity", ["ext_w"], ["e"]),
    ],
    "large",
    [vi("x", T.FLOAT, ["N", 64])],
    [vi("y", T.FLOAT, ["N", 32]), vi("e", T.FLOAT, [1024, 1024])],
    [
        nh.from_array(big, "big_w"),
        nh.from_array(rng.standard_normal(32).astype(np.float16), "half_b"),
        h.make_tensor("strings_big", T.STRING, [20], [f"s{i}".encode() for i in range(20)]),
        nh.from_array(np.arange(16, dtype=np.float32), "exactly_16"),
        nh.from_array(np.arange(17, dtype=np.float32), "just_17"),
        ext,
    ],
)
save("large", model(g))

with open(os.path.join(HERE, "manifest.txt"), "w") as f:
    f.write("# file flags (written by make_models.py)\n")
    for name, flags in MODELS:
        f.write(f"{name} {flags}\n")
print("wrote", len(MODELS), "models")
