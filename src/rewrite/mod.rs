//! Rewrite helpers shared by passes: constants as f64 arrays, value types, the affine-form
//! algebra that adapter folding rests on, and the classification of nodes as linear maps.

pub mod adapters;
pub mod consts;
pub mod cost;
pub mod form;
pub mod linear;
pub mod region;
pub mod types;

/// Union-find root of `x` with path compression (used to group nodes into regions).
pub fn find_root(parent: &mut [usize], x: usize) -> usize {
    let mut r = x;
    while parent[r] != r {
        r = parent[r];
    }
    let mut c = x;
    while parent[c] != r {
        let next = parent[c];
        parent[c] = r;
        c = next;
    }
    r
}
