//! The IR verifier: checks the invariants every pass must keep. Run after every pass in tests and
//! debug builds (and on demand with `--verify-ir`).

use std::collections::HashSet;

use super::graph::{Graph, Slot};
use crate::error::{Error, Result};

/// Checks: every node input and graph output is defined; every value has at most one definition;
/// consumer lists and graph edges match node inputs exactly; the graph is acyclic.
pub fn verify(g: &Graph) -> Result<()> {
    let mut expected_edges = 0usize;
    for n in g.node_ids() {
        let node = g.node(n);
        let uses = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (v, Slot::Input(i))))
            .chain(node.captures.iter().map(|&v| (v, Slot::Capture)));
        for (v, slot) in uses {
            let val = g.value(v);
            if !val.is_defined() {
                return Err(Error::graph(format!(
                    "{} reads '{}', which nothing defines",
                    node.label(),
                    val.name
                )));
            }
            if !val.consumers.contains(&(n, slot)) {
                return Err(Error::graph(format!(
                    "{}: consumer list of '{}' is missing this node",
                    node.label(),
                    val.name
                )));
            }
            if let Some((p, _)) = val.producer {
                expected_edges += 1;
                if !g.nodes.edges_connecting(p, n).any(|e| *e.weight() == v) {
                    return Err(Error::graph(format!(
                        "{}: missing graph edge for '{}'",
                        node.label(),
                        val.name
                    )));
                }
            }
        }
        for (i, out) in node.outputs.iter().enumerate() {
            if let Some(o) = *out {
                let val = g.value(o);
                if val.producer != Some((n, i)) {
                    return Err(Error::graph(format!(
                        "{}: output '{}' does not point back at it",
                        node.label(),
                        val.name
                    )));
                }
                if val.initializer.is_some() || val.is_input || val.sparse {
                    return Err(Error::graph(format!(
                        "'{}' is produced by {} and also declared as a graph input or initializer",
                        val.name,
                        node.label()
                    )));
                }
            }
        }
    }
    if g.nodes.edge_count() != expected_edges {
        return Err(Error::graph(format!(
            "{} graph edges for {} producer-consumer uses",
            g.nodes.edge_count(),
            expected_edges
        )));
    }
    for v in g.value_ids() {
        let val = g.value(v);
        for &(n, slot) in &val.consumers {
            let ok = g.nodes.contains_node(n)
                && match slot {
                    Slot::Input(i) => g.node(n).inputs.get(i) == Some(&Some(v)),
                    Slot::Capture => g.node(n).captures.contains(&v),
                };
            if !ok {
                return Err(Error::graph(format!(
                    "'{}' lists a consumer that does not read it",
                    val.name
                )));
            }
        }
        if let Some((p, i)) = val.producer
            && (!g.nodes.contains_node(p) || g.node(p).outputs.get(i) != Some(&Some(v)))
        {
            return Err(Error::graph(format!(
                "'{}' names a producer that does not write it",
                val.name
            )));
        }
    }
    let mut seen = HashSet::new();
    for port in &g.outputs {
        let val = g.value(port.value);
        if !val.is_defined() {
            return Err(Error::graph(format!(
                "graph output '{}' is not defined",
                val.name
            )));
        }
        if !seen.insert(port.value) {
            return Err(Error::graph(format!(
                "graph output '{}' is listed twice",
                val.name
            )));
        }
    }
    g.topo_order()?;
    Ok(())
}
