//! The WGSL kernels in `shaders/`, embedded at build time, and their validation with naga.

/// Every kernel: (name, source). The file is `shaders/<name>.wgsl`.
pub const SHADERS: &[(&str, &str)] = &[
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("copy", include_str!("../../shaders/copy.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    (
        "matmul_vec4",
        include_str!("../../shaders/matmul_vec4.wgsl"),
    ),
    (
        "matmul_tiled_f16w",
        include_str!("../../shaders/matmul_tiled_f16w.wgsl"),
    ),
    ("conv2d", include_str!("../../shaders/conv2d.wgsl")),
    (
        "conv_transpose2d",
        include_str!("../../shaders/conv_transpose2d.wgsl"),
    ),
    ("pool2d", include_str!("../../shaders/pool2d.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("resize", include_str!("../../shaders/resize.wgsl")),
    ("cumsum", include_str!("../../shaders/cumsum.wgsl")),
    ("gather", include_str!("../../shaders/gather.wgsl")),
    (
        "gather_elements",
        include_str!("../../shaders/gather_elements.wgsl"),
    ),
    ("gather_nd", include_str!("../../shaders/gather_nd.wgsl")),
    ("scatter_nd", include_str!("../../shaders/scatter_nd.wgsl")),
];

/// The shader file (without `.wgsl`) and entry point of a kernel: a kernel is a shader's `main`,
/// except the kernels that share a file with a sibling.
pub fn file_and_entry(kernel: &str) -> (&str, &'static str) {
    match kernel {
        "elementwise_specialised" => ("elementwise", "specialised"),
        "matmul_naive" => ("matmul", "naive"),
        "matmul_tiled" => ("matmul", "tiled"),
        other => (other, "main"),
    }
}

/// The source of shader file `name` (without `.wgsl`).
pub fn source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Parses and validates WGSL with naga; the error names the problem and its location.
pub fn validate(name: &str, source: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    validator
        .validate(&module)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    Ok(module)
}

/// The storage bindings of a kernel (binding number, read-write?, name), read from its source
/// with naga, so the plan's layout always matches the shader.
pub fn bindings(module: &naga::Module) -> Vec<(u32, String, String)> {
    let mut out = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        let ty = match var.space {
            naga::AddressSpace::Uniform => "uniform".to_string(),
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    "storage".to_string()
                } else {
                    "read-only-storage".to_string()
                }
            }
            _ => continue,
        };
        out.push((binding.binding, ty, var.name.clone().unwrap_or_default()));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shader_parses_and_validates() {
        for (name, src) in super::SHADERS {
            let m = super::validate(name, src).unwrap_or_else(|e| panic!("{e}"));
            let b = super::bindings(&m);
            assert_eq!(b[0].0, 0, "{name}: binding 0");
            assert_eq!(b[0].1, "uniform", "{name}: binding 0 is the info uniform");
            assert_eq!(b[1].1, "storage", "{name}: binding 1 is the output");
            for (i, (n, _, _)) in b.iter().enumerate() {
                assert_eq!(*n as usize, i, "{name}: bindings are numbered densely");
            }
        }
    }

    #[test]
    fn validation_reports_errors_with_the_kernel_name() {
        let e = super::validate("broken", "fn main( {").unwrap_err();
        assert!(e.starts_with("broken:"), "{e}");
    }
}
