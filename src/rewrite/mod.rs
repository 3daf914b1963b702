//! Rewrite helpers shared by passes: constants as f64 arrays, value types, the affine-form
//! algebra that adapter folding rests on, and the classification of nodes as linear maps.

pub mod consts;
pub mod form;
pub mod linear;
pub mod types;
