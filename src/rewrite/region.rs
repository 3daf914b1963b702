//! Regions: maximal groups of classified (affine) nodes whose intermediate values stay inside.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::find_root;
use crate::ir::{Graph, NodeId, ValueId};

/// A set of nodes rewritten together: `roots` write the values that leave it.
pub struct Region {
    pub roots: Vec<NodeId>,
    pub nodes: BTreeSet<NodeId>,
}

/// Finds regions among the classified nodes (`ops` maps each to the non-constant inputs it
/// reads): roots are affine nodes whose output leaves the affine world (a non-affine
/// consumer, a graph output, a subgraph capture); a root's cone extends backwards through
/// affine nodes all of whose consumers are affine. Roots whose cones share nodes form one
/// region (they are rewritten together or not at all). Values in `cuts` always end a region
/// (a pass cuts where a region's pieces turned out not to compose, and retries).
pub fn regions(
    g: &Graph,
    ops: &HashMap<NodeId, Vec<ValueId>>,
    order: &[NodeId],
    cuts: &HashSet<ValueId>,
) -> Vec<Region> {
    let absorbable = |n: NodeId| -> bool {
        let node = g.node(n);
        let Some(Some(out)) = node.outputs.first() else {
            return false;
        };
        if node
            .outputs
            .iter()
            .skip(1)
            .flatten()
            .any(|o| !g.value(*o).consumers.is_empty() || g.is_output(*o))
        {
            return false;
        }
        let val = g.value(*out);
        !cuts.contains(out)
            && !g.is_output(*out)
            && !val.is_captured()
            && !val.consumers.is_empty()
            && val.consumers.iter().all(|(c, _)| ops.contains_key(c))
    };
    let roots: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|n| ops.contains_key(n) && !absorbable(*n))
        .collect();
    let mut cones: Vec<BTreeSet<NodeId>> = Vec::new();
    for &r in &roots {
        let mut cone = BTreeSet::new();
        let mut stack = vec![r];
        while let Some(n) = stack.pop() {
            if !cone.insert(n) {
                continue;
            }
            for &v in &ops[&n] {
                if let Some(p) = g.producer(v)
                    && ops.contains_key(&p)
                    && absorbable(p)
                {
                    stack.push(p);
                }
            }
        }
        cones.push(cone);
    }
    let mut parent: Vec<usize> = (0..roots.len()).collect();
    let mut owner: HashMap<NodeId, usize> = HashMap::new();
    for (i, cone) in cones.iter().enumerate() {
        for &n in cone {
            if let Some(&j) = owner.get(&n) {
                let (a, b) = (find_root(&mut parent, i), find_root(&mut parent, j));
                parent[a] = b;
            } else {
                owner.insert(n, i);
            }
        }
    }
    let mut groups: BTreeMap<usize, Region> = BTreeMap::new();
    for (i, cone) in cones.into_iter().enumerate() {
        let r = find_root(&mut parent, i);
        let e = groups.entry(r).or_insert_with(|| Region {
            roots: Vec::new(),
            nodes: BTreeSet::new(),
        });
        e.roots.push(roots[i]);
        e.nodes.extend(cone);
    }
    groups.into_values().collect()
}
