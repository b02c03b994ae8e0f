//! Cooperative matrices (tensor cores, simdgroup matrices) for the matmul:
//! whether an adapter offers a configuration our kernel can use, and the
//! state of that path on one context. The path is opt-in
//! ([`super::GpuOptions::cooperative_matrix`]): its operands are rounded to
//! f16. It is used only after a self-test against the f32 kernels on the
//! same device (`kernels::matmul`), and falls back to them, saying so once.

/// The hardware tile the cooperative matmul runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CooperativeShape {
    /// 16 (Vulkan, `VK_KHR_cooperative_matrix`) or 8 (Metal simdgroup matrices).
    pub tile: u32,
    /// Invocations per workgroup: the adapter's largest subgroup, so that a
    /// workgroup is never a partial subgroup.
    pub lanes: u32,
}

/// The shapes the kernel is compiled for (`Kernel::all` lists the same).
pub(crate) const SHAPES: [(u32, u32); 3] = [(16, 32), (16, 64), (8, 32)];

/// Where the cooperative path stands on a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CooperativeState {
    /// Not asked for, or the adapter offers nothing usable.
    Off,
    /// Offered, not yet checked against the f32 kernels.
    Untested(CooperativeShape),
    /// The self-test is running: its own products use the cooperative
    /// kernel only when forced.
    Testing(CooperativeShape),
    /// Checked: products large enough take it.
    Verified(CooperativeShape),
    /// The self-test failed; the f32 kernels serve every product.
    Failed,
}

/// The features a device needs for the cooperative matmul.
pub(crate) fn features() -> wgpu::Features {
    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16
}

/// The shape our kernel can use on an adapter with `features`, the
/// cooperative configurations `configs` and subgroups of `subgroup_sizes`
/// (min, max) invocations, or why there is none.
pub(crate) fn choose_shape(
    features: wgpu::Features,
    configs: &[wgpu::CooperativeMatrixProperties],
    subgroup_sizes: (u32, u32),
) -> Result<CooperativeShape, String> {
    let missing: Vec<&str> = [
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "EXPERIMENTAL_COOPERATIVE_MATRIX",
        ),
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
    ]
    .into_iter()
    .filter(|(f, _)| !features.contains(*f))
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(format!("the adapter lacks {}", missing.join(" and ")));
    }
    let lanes = subgroup_sizes.1;
    let usable = |tile: u32| {
        configs.iter().any(|c| {
            c.m_size == tile
                && c.n_size == tile
                && c.k_size == tile
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
                && !c.saturating_accumulation
        })
    };
    SHAPES
        .into_iter()
        .find(|&(tile, l)| l == lanes && usable(tile))
        .map(|(tile, lanes)| CooperativeShape { tile, lanes })
        .ok_or_else(|| {
            format!(
                "none of its {} configurations is 16×16×16 or 8×8×8 f16 → f32 on subgroups \
                 of 32 (or 64 for 16×16)",
                configs.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::CooperativeScalarType::{F16, F32};

    fn config(
        size: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: size,
            n_size: size,
            k_size: size,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    #[test]
    fn picks_f16_to_f32_tiles_that_match_the_subgroup() {
        let all = features();
        // An NVIDIA-like list: 16×16×16 f16 → f16 and → f32, subgroups of 32.
        let nvidia = [config(16, F16, F16), config(16, F16, F32)];
        assert_eq!(
            choose_shape(all, &nvidia, (32, 32)),
            Ok(CooperativeShape {
                tile: 16,
                lanes: 32
            })
        );
        // AMD's wave64.
        assert_eq!(
            choose_shape(all, &nvidia, (32, 64)),
            Ok(CooperativeShape {
                tile: 16,
                lanes: 64
            })
        );
        // Apple: 8×8 only.
        let apple = [config(8, F32, F32), config(8, F16, F32)];
        assert_eq!(
            choose_shape(all, &apple, (32, 32)),
            Ok(CooperativeShape { tile: 8, lanes: 32 })
        );
        // Nothing with f32 accumulators, an odd subgroup, or missing features.
        assert!(choose_shape(all, &[config(16, F16, F16)], (32, 32)).is_err());
        assert!(choose_shape(all, &nvidia, (16, 16)).is_err());
        assert!(choose_shape(all, &apple, (32, 64)).is_err());
        let no_f16 = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let err = choose_shape(no_f16, &nvidia, (32, 32)).unwrap_err();
        assert!(err.contains("SHADER_F16"), "{err}");
        let mut saturating = config(16, F16, F32);
        saturating.saturating_accumulation = true;
        assert!(choose_shape(all, &[saturating], (32, 32)).is_err());
    }
}
