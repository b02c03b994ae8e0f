//! Every kernel variant parses and validates with naga and translates to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.1 (GL): this
//! catches Metal/DX12/GL breakage on a machine that has none of them.

use dora_wgpu::kernels::matmul::Matmul;
use dora_wgpu::kernels::{Kernel, MatmulKind};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// The variant's source parsed and validated by naga, as compiled for a
/// device with or without subgroup operations.
fn parse_and_validate(
    kernel: &Kernel,
    subgroups: bool,
) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let source = kernel.source_for(subgroups);
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| e.emit_to_string(&source))?;
    let mut capabilities = if subgroups {
        Capabilities::SUBGROUP
    } else {
        Capabilities::empty()
    };
    if is_cooperative(kernel) {
        capabilities |= Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16;
    }
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| e.emit_to_string(&source))?;
    Ok((module, info))
}

/// The cooperative matmul: only Vulkan (SPIR-V) and Metal (MSL 2.3) offer
/// cooperative matrices in wgpu 30, so DX12 and GL never compile it.
fn is_cooperative(kernel: &Kernel) -> bool {
    matches!(
        kernel,
        Kernel::Matmul(Matmul {
            kind: MatmulKind::Cooperative { .. },
            ..
        })
    )
}

fn check(kernel: &Kernel, subgroups: bool) -> Result<(), String> {
    let (module, info) = parse_and_validate(kernel, subgroups)?;
    if !module.entry_points.iter().any(|e| e.name == kernel.entry()) {
        return Err(format!("no entry point {}", kernel.entry()));
    }
    spv::write_vec(&module, &info, &spv::Options::default(), None)
        .map_err(|e| format!("SPIR-V: {e}"))?;
    let msl_options = msl::Options {
        // Metal 2.1 brought simdgroup functions.
        // Metal 2.3 brought simdgroup matrices.
        lang_version: if is_cooperative(kernel) {
            (2, 3)
        } else if subgroups {
            (2, 1)
        } else {
            (2, 0)
        },
        ..Default::default()
    };
    msl::write_string(
        &module,
        &info,
        &msl_options,
        &msl::PipelineOptions::default(),
    )
    .map_err(|e| format!("MSL: {e}"))?;
    if is_cooperative(kernel) {
        return Ok(());
    }
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl::Options::default(),
        &hlsl::PipelineOptions::default(),
    )
    .write(&module, &info, None)
    .map_err(|e| format!("HLSL: {e}"))?;
    for ep in &module.entry_points {
        let mut glsl_out = String::new();
        let options = glsl::Options {
            version: glsl::Version::new_gles(310),
            ..Default::default()
        };
        let pipeline = glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        glsl::Writer::new(
            &mut glsl_out,
            &module,
            &info,
            &options,
            &pipeline,
            Default::default(),
        )
        .and_then(|mut w| w.write().map(|_| ()))
        .map_err(|e| format!("GLSL {}: {e}", ep.name))?;
    }
    Ok(())
}

#[test]
fn every_kernel_variant_validates_and_translates_to_all_backends() {
    let kernels = Kernel::all();
    assert!(kernels.len() > 40, "expected every variant to be listed");
    // Each variant as compiled for a device without subgroups, and as
    // compiled for one with them (the row reductions differ).
    let failures: Vec<String> = kernels
        .iter()
        .flat_map(|k| [(k, false), (k, true)])
        .filter_map(|(k, sg)| {
            check(k, sg)
                .err()
                .map(|e| format!("{} (subgroups {sg}): {e}", k.label()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} variants failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Each `.wgsl` file under `src/kernels/` is pasted whole into some kernel's
/// source, so its full text (not a first line such as a comment, which files
/// may share) must appear in one: a file no kernel includes fails here. A
/// weight loader template (`shared/load_*.wgsl`) appears with its names
/// filled in, as every family but the matmul fills them.
#[test]
fn every_wgsl_file_is_used_by_some_kernel() {
    let sources: Vec<String> = Kernel::all()
        .iter()
        .flat_map(|k| [k.source_for(false), k.source_for(true)])
        .collect();
    let mut files = 0;
    let mut folders = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/kernels"
    ))];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "wgsl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let fillings: Vec<String> = QUANT_NAMES
                .iter()
                .map(|q| {
                    text.replace("{word}", "WWord")
                        .replace("{load}", "load_w")
                        .replace("{array}", "w")
                        .replace("{quant}", q)
                })
                .collect();
            assert!(
                sources
                    .iter()
                    .any(|s| fillings.iter().any(|f| s.contains(f.as_str()))),
                "{} is not included by any kernel",
                path.display()
            );
            files += 1;
        }
    }
    assert!(
        files > 10,
        "expected the WGSL files under src/kernels/, found {files} files"
    );
}

/// The names `shared/load_quant.wgsl`'s `{quant}` takes.
const QUANT_NAMES: [&str; 10] = [
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
];

/// The kernels `reduces_rows` lists (they get subgroup reductions) are
/// exactly those whose entry point takes a `RowLane`, as the WGSL declares.
#[test]
fn subgroup_reductions_go_to_exactly_the_kernels_that_reduce_rows() {
    for kernel in Kernel::all() {
        let source = kernel.source();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let entry = module
            .entry_points
            .iter()
            .find(|e| e.name == kernel.entry())
            .unwrap();
        let takes_lane = entry
            .function
            .arguments
            .iter()
            .any(|a| module.types[a.ty].name.as_deref() == Some("RowLane"));
        assert_eq!(
            takes_lane,
            kernel.reduces_rows(),
            "{}: entry {} takes a RowLane: {takes_lane}",
            kernel.label(),
            kernel.entry()
        );
        assert_eq!(
            kernel.source_for(true).contains("subgroupAdd"),
            takes_lane,
            "{}",
            kernel.label()
        );
    }
}

/// What each kernel binds, as the dispatcher declares it (`Kernel::bindings`:
/// the bind group layout and the order buffers are passed in), equals what its
/// WGSL entry point uses, read back by naga: binding numbers and whether each
/// storage buffer is written. A mismatch would otherwise show only when a
/// device creates the pipeline.
#[test]
fn declared_bindings_match_what_each_entry_point_uses() {
    use dora_wgpu::kernels::Access;
    let mut failures = Vec::new();
    for kernel in Kernel::all() {
        for subgroups in [false, true] {
            let (module, info) = parse_and_validate(&kernel, subgroups).unwrap();
            let index = module
                .entry_points
                .iter()
                .position(|e| e.name == kernel.entry())
                .unwrap();
            let uses = info.get_entry_point(index);
            let mut used: Vec<(u32, Option<Access>)> = module
                .global_variables
                .iter()
                .filter(|(handle, _)| !uses[*handle].is_empty())
                .filter_map(|(_, var)| {
                    let binding = var.binding.as_ref()?.binding;
                    match var.space {
                        naga::AddressSpace::Uniform => Some((binding, None)),
                        naga::AddressSpace::Storage { access } => Some((
                            binding,
                            Some(if access.contains(naga::StorageAccess::STORE) {
                                Access::ReadWrite
                            } else {
                                Access::Read
                            }),
                        )),
                        _ => None,
                    }
                })
                .collect();
            used.sort_by_key(|(b, _)| *b);
            let mut declared: Vec<(u32, Option<Access>)> = vec![(0, None)];
            declared.extend(kernel.bindings().iter().map(|&(b, a)| (b, Some(a))));
            declared.sort_by_key(|(b, _)| *b);
            if used != declared {
                failures.push(format!(
                    "{} (subgroups {subgroups}): entry uses {used:?}, bindings() declares {declared:?}",
                    kernel.label()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A struct member: (name, byte offset, size).
type Member = (String, usize, usize);

/// Each member of the WGSL struct bound at binding 0 (the kernel's
/// `Params`), and the struct's size, as naga lays them out.
fn wgsl_params(module: &naga::Module) -> Result<(Vec<Member>, usize), String> {
    let (_, var) = module
        .global_variables
        .iter()
        .find(|(_, v)| {
            v.space == naga::AddressSpace::Uniform
                && v.binding.as_ref().map(|b| b.binding) == Some(0)
        })
        .ok_or("no uniform at binding 0")?;
    let naga::TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
        return Err("the uniform at binding 0 is not a struct".into());
    };
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| format!("layout: {e}"))?;
    let members = members
        .iter()
        .map(|m| {
            (
                m.name.clone().unwrap_or_default(),
                m.offset as usize,
                layouter[m.ty].size as usize,
            )
        })
        .collect();
    Ok((members, *span as usize))
}

/// Where the WGSL `Params` of `source` differs from `rust` (the struct the
/// dispatcher uploads, as Rust lays it out), or None where they agree.
fn params_mismatch(source: &str, rust: &dora_wgpu::kernels::ParamsLayout) -> Option<String> {
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => return Some(e.emit_to_string(source)),
    };
    let (wgsl, wgsl_size) = match wgsl_params(&module) {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    let rust_members: Vec<Member> = rust
        .members
        .iter()
        .map(|m| (m.name.to_string(), m.offset, m.size))
        .collect();
    (wgsl != rust_members || wgsl_size != rust.size).then(|| {
        format!(
            "WGSL {wgsl:?} ({wgsl_size} bytes), Rust {rust_members:?} ({} bytes)",
            rust.size
        )
    })
}

/// Every kernel's WGSL `Params` has the member names, offsets and sizes of
/// the Rust struct its launcher uploads, read back from the variant's full
/// source by naga. (Both come from one `kernel_params!` declaration; this
/// keeps them from drifting if a shader ever declares its own.)
#[test]
fn each_kernels_wgsl_params_lay_out_as_the_rust_struct() {
    let failures: Vec<String> = Kernel::all()
        .iter()
        .filter_map(|k| {
            params_mismatch(&k.source(), &k.params()).map(|e| format!("{}: {e}", k.label()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The check above fails where the two sides differ: the same source with
/// two `Params` members swapped on the WGSL side is caught.
#[test]
fn params_with_two_fields_swapped_are_caught() {
    let kernel = Kernel::all()[0];
    let params = kernel.params();
    let source = kernel.source();
    let [first, second] = [&params.members[0], &params.members[1]].map(|m| {
        let line = source
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}:", m.name)))
            .unwrap();
        line.to_string()
    });
    let swapped = source
        .replacen(&first, "@@FIRST@@", 1)
        .replacen(&second, &first, 1)
        .replacen("@@FIRST@@", &second, 1);
    assert_ne!(swapped, source);
    assert!(params_mismatch(&source, &params).is_none());
    assert!(params_mismatch(&swapped, &params).is_some());
}
