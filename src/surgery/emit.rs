//! Writing an adapter into the graph: the nodes and weights for each kind, attached to a
//! target without changing any value name the rest of the graph (or its outputs) refers to.
//!
//! Output-side adapters intercept a value: its producer is made to write a fresh value, and
//! the adapter's last node writes the original name, so consumers, graph outputs and type
//! annotations stay as they were. Input-side adapters feed a new value to the target alone.

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use onnx_protobuf::{AttributeProto, ValueInfoProto, type_proto};

use super::params::{Params, Position, Side};
use super::target::{Target, TargetOp};
use crate::error::{Error, Result};
use crate::ir::{Graph, Node, Port, ValueId};
use crate::rewrite::consts::from_f64;

/// How adapter weights enter the graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmitOptions {
    /// Declare each adapter weight as a graph input (its initializer stays as the default
    /// value), so a runtime can feed another adapter.
    pub as_inputs: bool,
}

/// What one emission added.
#[derive(Clone, Debug, Default)]
pub struct Emitted {
    /// Names of the new weights.
    pub tensors: Vec<String>,
    /// How many nodes were added.
    pub nodes: usize,
}

struct Builder<'a> {
    g: &'a mut Graph,
    /// Prefix of weight and value names: the target's scope.
    prefix: String,
    /// Prefix of node names.
    node_prefix: String,
    dtype: i32,
    opts: EmitOptions,
    out: Emitted,
}

impl Builder<'_> {
    /// A weight named `<prefix>.<suffix>`.
    fn weight(&mut self, suffix: &str, a: ArrayD<f64>) -> Result<ValueId> {
        let t = from_f64(&a, self.dtype);
        let v = self
            .g
            .add_initializer(&format!("{}.{suffix}", self.prefix), t);
        if self.opts.as_inputs {
            let val = self.g.value_mut(v);
            val.is_input = true;
            let name = val.name.clone();
            let info = ValueInfoProto {
                name,
                type_: Some(tensor_type(self.dtype, a.shape())).into(),
                ..Default::default()
            };
            self.g.value_mut(v).ty = info.type_.clone().into_option();
            self.g.inputs.push(Port { value: v, info });
        }
        self.out.tensors.push(self.g.value(v).name.clone());
        Ok(v)
    }

    /// A constant that is not an adapter weight (a scale, a shape): never a graph input.
    fn constant(&mut self, suffix: &str, a: ArrayD<f64>) -> ValueId {
        let t = from_f64(&a, self.dtype);
        self.g
            .add_initializer(&format!("{}.{suffix}", self.prefix), t)
    }

    /// Adds `op(inputs)` writing a fresh value (or `output`); returns the value written.
    fn node(
        &mut self,
        op: &str,
        step: &str,
        inputs: &[ValueId],
        attrs: Vec<AttributeProto>,
        output: Option<ValueId>,
    ) -> Result<ValueId> {
        let out = match output {
            Some(o) => o,
            None => self.g.fresh_value(&format!("{}.{step}", self.prefix)),
        };
        let mut n = Node::new(op);
        n.name = format!("{}/{step}", self.node_prefix);
        n.inputs = inputs.iter().map(|&v| Some(v)).collect();
        n.outputs = vec![Some(out)];
        n.attrs = attrs;
        self.g.add_node(n)?;
        self.out.nodes += 1;
        Ok(out)
    }
}

fn tensor_type(dtype: i32, dims: &[usize]) -> onnx_protobuf::TypeProto {
    let mut shape = onnx_protobuf::TensorShapeProto::new();
    for &d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d as i64);
        shape.dim.push(dim);
    }
    onnx_protobuf::TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: dtype,
            shape: Some(shape).into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Makes `v`'s producer write a fresh value instead and returns it; `v` is left undefined (with
/// its consumers, graph-output role and type) for the adapter's last node to write.
fn intercept(g: &mut Graph, v: ValueId) -> Result<ValueId> {
    let (p, slot) = g.value(v).producer.ok_or_else(|| {
        Error::graph(format!(
            "'{}' has no producer to intercept",
            g.value(v).name
        ))
    })?;
    let fresh = g.fresh_value(&format!("{}_base", g.value(v).name));
    let mut node = g.remove_node(p);
    node.outputs[slot] = Some(fresh);
    g.add_node(node)?;
    Ok(fresh)
}

fn dyn1(a: &Array1<f64>) -> ArrayD<f64> {
    a.clone().into_dyn()
}

fn dyn2(a: &Array2<f64>) -> ArrayD<f64> {
    a.clone().into_dyn()
}

/// A per-channel vector shaped to broadcast over a Conv activation `[N, C, spatial…]`.
fn channel_vector(v: &Array1<f64>, spatial: usize) -> ArrayD<f64> {
    let mut shape = vec![1, v.len()];
    shape.extend(std::iter::repeat_n(1, spatial));
    v.clone()
        .into_shape_with_order(IxDyn(&shape))
        .expect("same element count")
}

/// Writes `params` into the graph at `t`. The caller has checked that `t` is still intact (no
/// earlier adapter replaced its node).
pub fn emit(
    g: &mut Graph,
    t: &Target,
    name: &str,
    params: &Params,
    opts: EmitOptions,
) -> Result<Emitted> {
    let dtype = g
        .constant(t.weight)
        .map(|w| w.dtype)
        .ok_or_else(|| Error::tensor(&g.value(t.weight).name, "the weight is gone"))?;
    let node_prefix = {
        let n = &g.node(t.node).name;
        if n.is_empty() {
            name.to_string()
        } else {
            n.clone()
        }
    };
    let mut b = Builder {
        g,
        prefix: name.to_string(),
        node_prefix,
        dtype,
        opts,
        out: Emitted::default(),
    };
    match params {
        Params::Lora {
            a,
            b: up,
            scale,
            bias,
            magnitude,
        } => lora(&mut b, t, a, up, *scale, bias.as_ref(), magnitude.as_ref())?,
        Params::Ia3 { l, side } => ia3(&mut b, t, l, *side)?,
        Params::Linear {
            layers,
            position,
            relu,
        } => linear(&mut b, t, layers, *position, *relu)?,
    }
    Ok(b.out)
}

fn spatial_rank(t: &Target) -> usize {
    t.weight_dims.len().saturating_sub(2)
}

/// The low-rank branch `s·(x·A·B + bias)`; returns its value, the A and B weights and the
/// scale constant.
fn lora_branch(
    b: &mut Builder,
    t: &Target,
    a: &Array2<f64>,
    up: &Array2<f64>,
    scale: f64,
    bias: Option<&Array1<f64>>,
) -> Result<(ValueId, ValueId, ValueId, ValueId)> {
    let r = a.ncols();
    if a.nrows() != t.d_in || up.nrows() != r || up.ncols() != t.d_out {
        return Err(Error::Usage(format!(
            "adapter for '{}' has A {:?} and B {:?}; the target needs [{}, r] and [r, {}]",
            t.scope,
            a.shape(),
            up.shape(),
            t.d_in,
            t.d_out
        )));
    }
    let (low, wa, wb) = match t.op {
        TargetOp::MatMul | TargetOp::Gemm { .. } => {
            let wa = b.weight("lora_A", dyn2(a))?;
            let wb = b.weight("lora_B", dyn2(up))?;
            let h = b.node("MatMul", "lora_A", &[t.input, wa], vec![], None)?;
            (b.node("MatMul", "lora_B", &[h, wb], vec![], None)?, wa, wb)
        }
        TargetOp::Gather => {
            let wa = b.weight("lora_embedding_A", dyn2(a))?;
            let wb = b.weight("lora_embedding_B", dyn2(up))?;
            let h = b.node("Gather", "lora_embedding_A", &[wa, t.input], vec![], None)?;
            (
                b.node("MatMul", "lora_embedding_B", &[h, wb], vec![], None)?,
                wa,
                wb,
            )
        }
        TargetOp::Conv { groups } => {
            let node = b.g.node(t.node).clone();
            if groups != 1 {
                return Err(Error::Usage(format!(
                    "LoRA on {} (group={groups}) cannot fold back exactly: its A factor would \
                     mix channel groups",
                    node.label()
                )));
            }
            if node
                .attr_ints("dilations")
                .is_some_and(|d| d.iter().any(|&x| x != 1))
            {
                return Err(Error::Usage(format!(
                    "LoRA on {} (dilation > 1) is not supported: PEFT's LoRA A does not take \
                     the dilation",
                    node.label()
                )));
            }
            let mut a_shape = vec![r];
            a_shape.extend_from_slice(&t.weight_dims[1..]);
            let a_conv = a
                .t()
                .as_standard_layout()
                .to_owned()
                .into_shape_with_order(IxDyn(&a_shape))
                .map_err(|e| Error::graph(e.to_string()))?;
            let mut b_shape = vec![t.d_out, r];
            b_shape.extend(std::iter::repeat_n(1, spatial_rank(t)));
            let b_conv = up
                .t()
                .as_standard_layout()
                .to_owned()
                .into_shape_with_order(IxDyn(&b_shape))
                .map_err(|e| Error::graph(e.to_string()))?;
            let wa = b.weight("lora_A", a_conv)?;
            let wb = b.weight("lora_B", b_conv)?;
            let attrs: Vec<AttributeProto> = node
                .attrs
                .iter()
                .filter(|x| matches!(x.name.as_str(), "strides" | "pads" | "auto_pad"))
                .cloned()
                .collect();
            let h = b.node("Conv", "lora_A", &[t.input, wa], attrs, None)?;
            (b.node("Conv", "lora_B", &[h, wb], vec![], None)?, wa, wb)
        }
    };
    let low = match bias {
        Some(v) => {
            let c = if t.feature_last() {
                dyn1(v)
            } else {
                channel_vector(v, spatial_rank(t))
            };
            let cb = b.weight("lora_B_bias", c)?;
            b.node("Add", "lora_B_bias", &[low, cb], vec![], None)?
        }
        None => low,
    };
    let s = b.constant("lora_scale", ArrayD::from_elem(IxDyn(&[]), scale));
    Ok((
        b.node("Mul", "lora_scale", &[low, s], vec![], None)?,
        wa,
        wb,
        s,
    ))
}

fn lora(
    b: &mut Builder,
    t: &Target,
    a: &Array2<f64>,
    up: &Array2<f64>,
    scale: f64,
    bias: Option<&Array1<f64>>,
    magnitude: Option<&Array1<f64>>,
) -> Result<()> {
    let Some(m) = magnitude else {
        let (delta, _, _, _) = lora_branch(b, t, a, up, scale, bias)?;
        let base = intercept(b.g, t.output)?;
        b.node("Add", "lora_add", &[base, delta], vec![], Some(t.output))?;
        return Ok(());
    };
    // DoRA: out = c ⊙ (x·M + s·x·A·B) (+ bias, unscaled), c = m / ‖M + s·A·B‖ per column.
    if !matches!(t.op, TargetOp::MatMul | TargetOp::Gemm { .. }) {
        return Err(Error::Usage(format!(
            "DoRA is supported on MatMul and Gemm targets; '{}' is a {}",
            t.scope,
            t.op.name()
        )));
    }
    if m.len() != t.d_out {
        return Err(Error::Usage(format!(
            "DoRA magnitude for '{}' has {} entries; the target has {} outputs",
            t.scope,
            m.len(),
            t.d_out
        )));
    }
    let (delta, wa, wb, s) = lora_branch(b, t, a, up, scale, bias)?;
    // The column norms are computed in the graph from the weights, as PEFT does, so that the
    // adapter weights can be graph inputs; a fold turns them into a constant.
    let mx = match t.op {
        TargetOp::Gemm { trans_b: true } => b.node(
            "Transpose",
            "dora_weight_t",
            &[t.weight],
            vec![crate::rewrite::ints_attr("perm", &[1, 0])],
            None,
        )?,
        _ => t.weight,
    };
    let ab = b.node("MatMul", "dora_delta", &[wa, wb], vec![], None)?;
    let sab = b.node("Mul", "dora_delta_scaled", &[ab, s], vec![], None)?;
    let full = b.node("Add", "dora_weight", &[mx, sab], vec![], None)?;
    let sq = b.node("Mul", "dora_square", &[full, full], vec![], None)?;
    let ones = b.constant("dora_ones", ArrayD::from_elem(IxDyn(&[1, t.d_in]), 1.0));
    let sum = b.node("MatMul", "dora_column_sum", &[ones, sq], vec![], None)?;
    let norm = b.node("Sqrt", "dora_norm", &[sum], vec![], None)?;
    let mv = b.weight("lora_magnitude_vector", dyn1(m))?;
    let c = b.node("Div", "dora_factor", &[mv, norm], vec![], None)?;
    let base = intercept(b.g, t.output)?;
    let gemm_bias = match t.op {
        TargetOp::Gemm { .. } => t.bias,
        _ => None,
    };
    let pre = match gemm_bias {
        Some(bias) => b.node("Sub", "dora_unbias", &[base, bias], vec![], None)?,
        None => base,
    };
    let z = b.node("Add", "lora_add", &[pre, delta], vec![], None)?;
    match gemm_bias {
        Some(bias) => {
            let scaled = b.node("Mul", "dora_scale_out", &[z, c], vec![], None)?;
            b.node(
                "Add",
                "dora_rebias",
                &[scaled, bias],
                vec![],
                Some(t.output),
            )?;
        }
        None => {
            b.node("Mul", "dora_scale_out", &[z, c], vec![], Some(t.output))?;
        }
    }
    Ok(())
}

fn ia3(b: &mut Builder, t: &Target, l: &Array1<f64>, side: Side) -> Result<()> {
    let vector = |l: &Array1<f64>| {
        if t.feature_last() {
            dyn1(l)
        } else {
            channel_vector(l, spatial_rank(t))
        }
    };
    match side {
        Side::Output => {
            if l.len() != t.d_out {
                return Err(Error::Usage(format!(
                    "IA3 vector for '{}' has {} entries; the target has {} outputs",
                    t.scope,
                    l.len(),
                    t.d_out
                )));
            }
            let lv = b.weight("ia3_l", vector(l))?;
            let base = intercept(b.g, t.module_output)?;
            b.node("Mul", "ia3", &[base, lv], vec![], Some(t.module_output))?;
        }
        Side::Input => {
            let lv = b.weight("ia3_l", vector(l))?;
            let scaled = b.node("Mul", "ia3", &[t.input, lv], vec![], None)?;
            b.g.set_input(t.node, 0, Some(scaled));
        }
    }
    Ok(())
}

fn linear(
    b: &mut Builder,
    t: &Target,
    layers: &[(Array2<f64>, Array1<f64>)],
    position: Position,
    relu: bool,
) -> Result<()> {
    let names: &[&str] = if layers.len() == 1 {
        &["adapter"]
    } else {
        &["adapter_down", "adapter_up"]
    };
    let source = match position {
        Position::Before => t.input,
        Position::After => intercept(b.g, t.module_output)?,
    };
    let mut h = source;
    for (i, ((w, bias), name)) in layers.iter().zip(names).enumerate() {
        let wv = b.weight(name, dyn2(w))?;
        let bv = b.weight(&format!("{name}_bias"), dyn1(bias))?;
        h = b.node("MatMul", name, &[h, wv], vec![], None)?;
        h = b.node("Add", &format!("{name}_bias"), &[h, bv], vec![], None)?;
        if relu && i + 1 < layers.len() {
            h = b.node("Relu", "adapter_act", &[h], vec![], None)?;
        }
    }
    match position {
        Position::Before => {
            let x2 = b.node("Add", "adapter_residual", &[source, h], vec![], None)?;
            b.g.set_input(t.node, 0, Some(x2));
        }
        Position::After => {
            b.node(
                "Add",
                "adapter_residual",
                &[source, h],
                vec![],
                Some(t.module_output),
            )?;
        }
    }
    Ok(())
}
