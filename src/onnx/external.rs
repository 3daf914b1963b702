//! Resolving external-data locations safely. A location must be a relative path that stays inside
//! the model's folder, through symlinks too; its byte range must lie inside the file and match
//! the tensor's declared shape. These checks run before any data is read or allocated.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use onnx_protobuf::TensorProto;

use crate::ir::dtype;
use crate::ir::tensor::ExternalFile;

/// Checks that `location` is a plain relative path with no `..`, root or drive components.
/// Returns a message naming the problem.
pub fn check_relative_location(location: &str) -> Result<PathBuf, String> {
    if location.is_empty() {
        return Err("external data location is empty".into());
    }
    if location.contains('\0') {
        return Err("external data location contains a NUL byte".into());
    }
    if location.contains('\\') {
        return Err(format!(
            "external data location '{location}' contains a backslash; use '/' separators"
        ));
    }
    let p = Path::new(location);
    if p.is_absolute() {
        return Err(format!(
            "external data location '{location}' is an absolute path; it must be relative to the model's folder"
        ));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "external data location '{location}' uses '..' and could leave the model's folder"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "external data location '{location}' is not a relative path"
                ));
            }
        }
    }
    Ok(p.to_path_buf())
}

/// The parsed `external_data` entries of a tensor.
pub struct ExternalSpec {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

pub fn parse_spec(t: &TensorProto) -> Result<ExternalSpec, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        match e.key.as_str() {
            "location" => location = Some(e.value.clone()),
            "offset" => {
                offset = e
                    .value
                    .parse()
                    .map_err(|_| format!("external data offset '{}' is not a number", e.value))?
            }
            "length" => {
                length =
                    Some(e.value.parse().map_err(|_| {
                        format!("external data length '{}' is not a number", e.value)
                    })?)
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data has no 'location' entry")?;
    Ok(ExternalSpec {
        location,
        offset,
        length,
    })
}

/// Opens external-data files for one model folder, each once.
pub struct Resolver {
    dir: PathBuf,
    canonical_dir: Option<PathBuf>,
    files: HashMap<PathBuf, Arc<ExternalFile>>,
}

impl Resolver {
    pub fn new(dir: &Path) -> Self {
        Resolver {
            dir: dir.to_path_buf(),
            canonical_dir: dir.canonicalize().ok(),
            files: HashMap::new(),
        }
    }

    /// Resolves a tensor's external data to (file, offset, length), checking everything.
    pub fn resolve(&mut self, t: &TensorProto) -> Result<(Arc<ExternalFile>, u64, u64), String> {
        let spec = parse_spec(t)?;
        let rel = check_relative_location(&spec.location)?;
        let full = self.dir.join(&rel);
        let canonical = full.canonicalize().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "external data file '{}' does not exist (looked for {})",
                    spec.location,
                    full.display()
                )
            } else {
                format!("external data file '{}': {e}", spec.location)
            }
        })?;
        let dir = self
            .canonical_dir
            .as_ref()
            .ok_or("the model's folder cannot be resolved")?;
        if !canonical.starts_with(dir) {
            return Err(format!(
                "external data location '{}' resolves (through a symlink) to {}, outside the model's folder",
                spec.location,
                canonical.display()
            ));
        }
        let file = match self.files.get(&canonical) {
            Some(f) => f.clone(),
            None => {
                let meta = std::fs::metadata(&canonical)
                    .map_err(|e| format!("external data file '{}': {e}", spec.location))?;
                if !meta.is_file() {
                    return Err(format!(
                        "external data location '{}' is not a regular file",
                        spec.location
                    ));
                }
                let f = File::open(&canonical)
                    .map_err(|e| format!("external data file '{}': {e}", spec.location))?;
                let ef = Arc::new(ExternalFile::new(
                    canonical.clone(),
                    spec.location.clone(),
                    f,
                    meta.len(),
                ));
                self.files.insert(canonical, ef.clone());
                ef
            }
        };
        let count = dtype::element_count(&t.dims)
            .ok_or_else(|| format!("dims {:?} are negative or their product overflows", t.dims))?;
        if dtype::bits(t.data_type).is_some() && dtype::byte_len(t.data_type, count).is_none() {
            return Err(format!(
                "dims {:?} describe more bytes than can be addressed (the size overflows)",
                t.dims
            ));
        }
        let need = dtype::byte_len(t.data_type, count);
        if spec.offset > file.len {
            return Err(format!(
                "external data offset {} lies beyond the end of '{}' ({} bytes)",
                spec.offset, spec.location, file.len
            ));
        }
        let length = match spec.length {
            Some(l) => l,
            None => need.unwrap_or(file.len - spec.offset),
        };
        let end = spec
            .offset
            .checked_add(length)
            .ok_or("external data range overflows")?;
        if end > file.len {
            return Err(format!(
                "external data range {}..{end} lies beyond the end of '{}' ({} bytes)",
                spec.offset, spec.location, file.len
            ));
        }
        match need {
            Some(n) if n != length => Err(format!(
                "dims {:?} of {} need {n} bytes but external data length is {length}",
                t.dims,
                dtype::name(t.data_type)
            )),
            None => Err(format!(
                "external data of element type {} ({}) is not supported",
                dtype::name(t.data_type),
                t.data_type
            )),
            _ => Ok((file, spec.offset, length)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_stay_relative() {
        assert!(check_relative_location("w.bin").is_ok());
        assert!(check_relative_location("sub/w.bin").is_ok());
        assert!(check_relative_location("./w.bin").is_ok());
        for bad in ["/etc/passwd", "../w.bin", "a/../../w.bin", "", "a\\..\\b"] {
            assert!(check_relative_location(bad).is_err(), "{bad}");
        }
    }
}
