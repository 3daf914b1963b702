//! Tensors with lazily held data: bytes as loaded, a memory-mapped external range, or computed bytes.
//!
//! A tensor that no pass touched keeps its original `TensorProto` (or its external byte range), so
//! saving writes it back byte for byte.

use std::borrow::Cow;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::Mmap;
use onnx_protobuf::TensorProto;
use sha2::{Digest, Sha256};

use super::dtype::{self, code};
use crate::error::{Error, Result};

/// An opened external-data file, shared by every tensor stored in it.
#[derive(Debug)]
pub struct ExternalFile {
    /// Absolute, canonical path of the file (checked to lie inside the model's folder).
    pub path: PathBuf,
    /// The location string as written in the model.
    pub location: String,
    pub file: File,
    pub len: u64,
    map: std::sync::OnceLock<std::result::Result<Mmap, String>>,
}

impl ExternalFile {
    pub fn new(path: PathBuf, location: String, file: File, len: u64) -> Self {
        ExternalFile {
            path,
            location,
            file,
            len,
            map: std::sync::OnceLock::new(),
        }
    }

    /// The file's bytes, mapped on first use (never read whole into memory).
    pub fn bytes(&self) -> Result<&[u8]> {
        let map = self.map.get_or_init(|| {
            // SAFETY: the file is opened read-only; graft never writes to a file it maps (outputs
            // are written to a temporary file and renamed, which leaves this inode untouched).
            unsafe { Mmap::map(&self.file) }.map_err(|e| e.to_string())
        });
        match map {
            Ok(m) => Ok(&m[..]),
            Err(e) => Err(Error::io(
                &self.path,
                std::io::Error::other(format!("cannot map: {e}")),
            )),
        }
    }
}

/// Where a tensor's bytes live.
#[derive(Clone, Debug)]
pub enum TensorData {
    /// Embedded in the model as loaded (raw_data or typed fields); written back unchanged.
    Embedded(Arc<TensorProto>),
    /// A byte range of an external-data file; `shell` keeps the proto's other fields.
    /// `spill` is `None` for data in the model's own files; `Some(external)` for large results
    /// graft computed and parked in an unnamed temporary file (so multi-GB folds stay out of
    /// memory), `external` saying whether saving should keep them external (as the weight they
    /// replace was) or embed them.
    External {
        file: Arc<ExternalFile>,
        offset: u64,
        length: u64,
        shell: Arc<TensorProto>,
        spill: Option<bool>,
    },
    /// Little-endian bytes computed by graft.
    Raw(Arc<Vec<u8>>),
    /// A summary read from text (no data); cannot be written as ONNX.
    Placeholder { hash: String },
    /// Rows computed on demand (a merged weight streamed from its base): saving writes them
    /// straight into the output, so a multi-GB merge is never held or written twice.
    Rows {
        rows: usize,
        row_bytes: usize,
        rows_of: RowGen,
        /// Save as external data (as the weight it replaces was).
        external: bool,
    },
}

/// Produces the little-endian bytes of rows `r0..r1` of a tensor.
#[derive(Clone)]
pub struct RowGen(pub Arc<dyn Fn(usize, usize) -> Result<Vec<u8>> + Send + Sync>);

impl std::fmt::Debug for RowGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowGen")
    }
}

/// A constant tensor: element type, shape and data.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: i32,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    /// A computed tensor from little-endian bytes. The caller guarantees the length matches.
    pub fn from_raw(dtype: i32, dims: Vec<i64>, bytes: Vec<u8>) -> Self {
        Tensor {
            dtype,
            dims,
            data: TensorData::Raw(Arc::new(bytes)),
        }
    }

    /// Number of elements (validated at load, so this does not overflow for loaded tensors).
    pub fn numel(&self) -> u64 {
        dtype::element_count(&self.dims).unwrap_or(0)
    }

    /// Bytes of the dense little-endian form, when the element type has a fixed size.
    pub fn byte_len(&self) -> Option<u64> {
        dtype::byte_len(self.dtype, self.numel())
    }

    /// Whether saving keeps this tensor in external data by default.
    pub fn is_external(&self) -> bool {
        matches!(
            self.data,
            TensorData::External {
                spill: None | Some(true),
                ..
            } | TensorData::Rows { external: true, .. }
        )
    }

    /// Whether the data lives in one of the model's own external files.
    pub fn in_model_file(&self) -> bool {
        matches!(self.data, TensorData::External { spill: None, .. })
    }

    /// External ranges larger than this are read into a buffer instead of through the map.
    pub const DIRECT_READ_BYTES: u64 = 1 << 20;

    /// Reads `n` bytes at `at` of the dense form (a cheap sample, without reading it all).
    pub fn sample(&self, name: &str, at: u64, n: usize) -> Result<Vec<u8>> {
        if let TensorData::Rows {
            rows,
            row_bytes,
            rows_of,
            ..
        } = &self.data
        {
            let rb = (*row_bytes).max(1);
            let total = rows * rb;
            let start = (at as usize).min(total);
            let end = (start + n).min(total);
            let (r0, r1) = (start / rb, end.div_ceil(rb).min(*rows));
            let block = (rows_of.0)(r0, r1)?;
            let off = start - r0 * rb;
            return Ok(block[off..off + (end - start)].to_vec());
        }
        if let TensorData::External {
            file,
            offset,
            length,
            ..
        } = &self.data
        {
            use std::os::unix::fs::FileExt;
            let n = n.min(length.saturating_sub(at) as usize);
            let mut buf = vec![0u8; n];
            file.file
                .read_exact_at(&mut buf, offset + at)
                .map_err(|e| Error::io(&file.path, e))?;
            return Ok(buf);
        }
        let b = self.bytes(name)?;
        let start = (at as usize).min(b.len());
        Ok(b[start..(start + n).min(b.len())].to_vec())
    }

    /// Tensors larger than this are parked in a temporary file instead of memory.
    pub const SPILL_BYTES: usize = 16 << 20;

    /// A computed tensor already written to an unnamed temporary file of `len` bytes.
    pub fn spilled(dtype: i32, dims: Vec<i64>, file: File, len: u64, external: bool) -> Self {
        let file = Arc::new(ExternalFile::new(
            PathBuf::from("(graft spill)"),
            String::new(),
            file,
            len,
        ));
        Tensor {
            dtype,
            dims,
            data: TensorData::External {
                file,
                offset: 0,
                length: len,
                shell: Arc::new(TensorProto::default()),
                spill: Some(external),
            },
        }
    }

    /// The folder large computed tensors are parked in.
    pub fn spill_dir() -> PathBuf {
        std::env::var_os("GRAFT_SPILL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    }

    /// A computed tensor; large ones (and external-bound ones of 1 KiB or more) go to an
    /// unnamed temporary file (in `GRAFT_SPILL_DIR`
    /// or the system's temporary folder) and are read back through a memory map.
    pub fn computed(dtype: i32, dims: Vec<i64>, bytes: Vec<u8>, external: bool) -> Result<Self> {
        // Small results that will be embedded stay in memory; results that will be saved as
        // external data (the weight they replace was) and large ones go to a file.
        if bytes.len() <= Self::SPILL_BYTES && !(external && bytes.len() >= 1024) {
            return Ok(Tensor::from_raw(dtype, dims, bytes));
        }
        use std::io::Write;
        let dir = Self::spill_dir();
        let mut f = tempfile::tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&dir, e))?;
        let len = bytes.len() as u64;
        drop(bytes);
        let file = Arc::new(ExternalFile::new(
            dir.join("(graft spill)"),
            String::new(),
            f,
            len,
        ));
        Ok(Tensor {
            dtype,
            dims,
            data: TensorData::External {
                file,
                offset: 0,
                length: len,
                shell: Arc::new(TensorProto::default()),
                spill: Some(external),
            },
        })
    }

    /// The dense little-endian bytes (borrowed where possible).
    pub fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        match &self.data {
            TensorData::Raw(b) => Ok(Cow::Borrowed(&b[..])),
            TensorData::External {
                file,
                offset,
                length,
                ..
            } => {
                // Large ranges are read with positioned reads into a buffer the caller drops,
                // rather than through the map: mapped pages would stay in the process's
                // resident set for the rest of the run.
                if *length > Self::DIRECT_READ_BYTES {
                    use std::os::unix::fs::FileExt;
                    let len = usize::try_from(*length)
                        .map_err(|_| Error::tensor(name, "is too large to read on this machine"))?;
                    let mut buf = vec![0u8; len];
                    file.file
                        .read_exact_at(&mut buf, *offset)
                        .map_err(|e| Error::io(&file.path, e))?;
                    return Ok(Cow::Owned(buf));
                }
                let all = file.bytes()?;
                let start = *offset as usize;
                let end = start
                    .checked_add(*length as usize)
                    .filter(|&e| e <= all.len())
                    .ok_or_else(|| {
                        Error::tensor(name, "external data range lies beyond the end of the file")
                    })?;
                Ok(Cow::Borrowed(&all[start..end]))
            }
            TensorData::Embedded(p) => embedded_bytes(name, p),
            TensorData::Rows { rows, rows_of, .. } => Ok(Cow::Owned((rows_of.0)(0, *rows)?)),
            TensorData::Placeholder { .. } => Err(Error::tensor(
                name,
                "has no data (it was read from a summary; print with --weights full to keep data)",
            )),
        }
    }

    /// A short content hash of dtype, shape and bytes: the first 16 hex digits of SHA-256.
    pub fn content_hash(&self, name: &str) -> Result<String> {
        if let TensorData::Placeholder { hash } = &self.data {
            return Ok(hash.clone());
        }
        let mut h = Sha256::new();
        if self.dtype == code::STRING {
            if let TensorData::Embedded(p) = &self.data {
                for s in &p.string_data {
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s);
                }
            }
        } else {
            h.update(&self.bytes(name)?[..]);
        }
        let digest = h.finalize();
        Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }
}

/// Validates an embedded tensor's declared shape against its data, before anything is allocated.
pub fn check_embedded(name: &str, p: &TensorProto) -> Result<()> {
    let count = dtype::element_count(&p.dims).ok_or_else(|| {
        Error::tensor(
            name,
            format!("dims {:?} are negative or their product overflows", p.dims),
        )
    })?;
    if p.data_type == code::STRING {
        if p.string_data.len() as u64 != count {
            return Err(Error::tensor(
                name,
                format!(
                    "declares {count} elements but holds {} strings",
                    p.string_data.len()
                ),
            ));
        }
        return Ok(());
    }
    if dtype::bits(p.data_type).is_none() {
        // Unknown element type: keep the tensor as it is; graft never reads it.
        return Ok(());
    }
    let need = dtype::byte_len(p.data_type, count).ok_or_else(|| {
        Error::tensor(
            name,
            format!(
                "dims {:?} describe more bytes than can be addressed (the size overflows)",
                p.dims
            ),
        )
    })?;
    if !p.raw_data.is_empty() || count == 0 || typed_len(p) == 0 {
        if p.raw_data.len() as u64 != need {
            return Err(Error::tensor(
                name,
                format!(
                    "dims {:?} need {need} bytes of {} data but raw_data has {}",
                    p.dims,
                    dtype::name(p.data_type),
                    p.raw_data.len()
                ),
            ));
        }
        return Ok(());
    }
    let expected = typed_count(p.data_type, count);
    if typed_len(p) as u64 != expected {
        return Err(Error::tensor(
            name,
            format!(
                "dims {:?} need {expected} typed values but the tensor holds {}",
                p.dims,
                typed_len(p)
            ),
        ));
    }
    Ok(())
}

fn typed_len(p: &TensorProto) -> usize {
    p.float_data.len()
        + p.int32_data.len()
        + p.int64_data.len()
        + p.double_data.len()
        + p.uint64_data.len()
}

/// How many typed-field entries a tensor of `count` elements holds.
fn typed_count(dt: i32, count: u64) -> u64 {
    match dt {
        code::COMPLEX64 | code::COMPLEX128 => count * 2,
        code::INT4 | code::UINT4 | code::FLOAT4E2M1 => count.div_ceil(2),
        code::INT2 | code::UINT2 => count.div_ceil(4),
        _ => count,
    }
}

/// Dense little-endian bytes of an embedded tensor, decoding typed fields when needed.
fn embedded_bytes<'a>(name: &str, p: &'a TensorProto) -> Result<Cow<'a, [u8]>> {
    if !p.raw_data.is_empty() || typed_len(p) == 0 {
        return Ok(Cow::Borrowed(&p.raw_data));
    }
    let mut out = Vec::new();
    match p.data_type {
        code::FLOAT | code::COMPLEX64 => {
            for v in &p.float_data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        code::DOUBLE | code::COMPLEX128 => {
            for v in &p.double_data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        code::INT64 => {
            for v in &p.int64_data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        code::UINT32 => {
            for v in &p.uint64_data {
                out.extend_from_slice(&(*v as u32).to_le_bytes());
            }
        }
        code::UINT64 => {
            for v in &p.uint64_data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        code::INT32 => {
            for v in &p.int32_data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        code::INT16 | code::UINT16 | code::FLOAT16 | code::BFLOAT16 => {
            for v in &p.int32_data {
                out.extend_from_slice(&(*v as u16).to_le_bytes());
            }
        }
        code::INT8
        | code::UINT8
        | code::BOOL
        | code::FLOAT8E4M3FN
        | code::FLOAT8E4M3FNUZ
        | code::FLOAT8E5M2
        | code::FLOAT8E5M2FNUZ
        | code::FLOAT8E8M0
        | code::INT4
        | code::UINT4
        | code::FLOAT4E2M1
        | code::INT2
        | code::UINT2 => {
            for v in &p.int32_data {
                out.push(*v as u8);
            }
        }
        other => {
            return Err(Error::tensor(
                name,
                format!("cannot decode typed data of element type {other}"),
            ));
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dt: i32, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: dt,
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_length_must_match_dims() {
        let mut p = proto(code::FLOAT, &[2, 2]);
        p.raw_data = vec![0; 12];
        let e = check_embedded("w", &p).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("16 bytes"), "{e}");
        p.raw_data = vec![0; 16];
        check_embedded("w", &p).unwrap();
    }

    #[test]
    fn huge_declared_dims_are_refused_before_allocation() {
        let mut p = proto(code::FLOAT, &[1 << 40, 1 << 40]);
        p.raw_data = vec![0; 4];
        assert!(check_embedded("w", &p).is_err());
        let p = proto(code::FLOAT, &[i64::MAX, 2]);
        assert!(
            check_embedded("w", &p)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
    }

    #[test]
    fn typed_fields_decode_to_little_endian() {
        let mut p = proto(code::FLOAT16, &[2]);
        p.int32_data = vec![0x3c00, 0xc000];
        check_embedded("h", &p).unwrap();
        let b = embedded_bytes("h", &p).unwrap();
        assert_eq!(&b[..], &[0x00, 0x3c, 0x00, 0xc0]);
        let mut p = proto(code::INT4, &[3]);
        p.int32_data = vec![0x21, 0x03];
        check_embedded("q", &p).unwrap();
    }
}
