//! Estimated multiply-adds of a model for its (static) shapes: MatMul/Gemm/Conv count one per
//! multiply-add, every other node one per output element.

use crate::driver::{Pass, PassContext};
use crate::ir::Model;

use super::types::static_shape;

/// Total multiply-adds, or `None` when some node's output shape is unknown.
pub fn macs(model: &Model) -> Option<u64> {
    let mut m = model.clone();
    crate::passes::shape_infer::ShapeInfer
        .run(&mut m, &mut PassContext::default())
        .ok()?;
    let g = &m.graph;
    let mut total = 0u64;
    for n in g.node_ids() {
        let node = g.node(n);
        let out = node.outputs.first().copied().flatten()?;
        let out_elems: u64 = static_shape(g, out)?.iter().product::<i64>().max(0) as u64;
        let input_shape = |i: usize| {
            node.inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| static_shape(g, v))
        };
        let cost = match node.op_type.as_str() {
            "MatMul" => {
                let a = input_shape(0)?;
                out_elems * (*a.last()?).max(1) as u64
            }
            "Gemm" => {
                let a = input_shape(0)?;
                let k = if node.attr_int("transA").unwrap_or(0) != 0 {
                    a[0]
                } else {
                    *a.last()?
                };
                out_elems * k.max(1) as u64
            }
            "Conv" => {
                let w = input_shape(1)?;
                out_elems * w[1..].iter().product::<i64>().max(1) as u64
            }
            "ConvTranspose" => {
                let x = input_shape(0)?;
                let w = input_shape(1)?;
                x.iter().product::<i64>().max(0) as u64
                    * w[1..].iter().product::<i64>().max(1) as u64
            }
            _ => out_elems,
        };
        total = total.saturating_add(cost);
    }
    Some(total)
}
