//! Every compute kernel the library can launch. One folder per family holds
//! its WGSL beside its Rust side: the variants, their entry points,
//! bindings and parameter struct (declared once, [`params::kernel_params!`]),
//! the generated header that differs between variants, and the unrecorded
//! launchers the ops, the tape and the optimizer call. A variant's source is
//! its parameter struct, that header, `shared/common.wgsl`, a row reduction
//! and the family's `.wgsl` file. [`Kernel::all`] lists every variant, from
//! the same rules the launchers choose by, so tests can validate and
//! cross-compile each one with naga.

pub mod adamw;
pub mod attention;
pub mod bench;
pub mod columns;
pub mod dora;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod loss;
pub mod matmul;
pub mod norm;
pub(crate) mod params;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod shared;
pub mod softmax;

pub use crate::gpu::Access;
pub use elementwise::{BinaryOp, Broadcast, UnaryOp};
pub use flash_attention::AttentionPass;
pub use matmul::{MatmulKind, MatmulTile};
pub use params::{Member, ParamsLayout};

use crate::error::Result;
use crate::gpu::{grid, Program};
use crate::tensor::Tensor;
use params::Params;

/// What each family says about one of its variants.
trait Family: std::fmt::Debug {
    fn entry(&self) -> &'static str;
    /// The storage bindings, as (binding, access) in the order a dispatch
    /// passes its buffers. Binding 0 is always the parameters.
    fn bindings(&self) -> &'static [(u32, Access)];
    fn params(&self) -> ParamsLayout;
    /// The WGSL `enable` directives the variant needs (they open the module).
    fn enables(&self) -> &'static str {
        ""
    }
    /// The constants and small functions that differ between variants.
    fn header(&self) -> String {
        String::new()
    }
    /// The family's WGSL file that holds this variant's entry point.
    fn body(&self) -> &'static str;
    /// Whether the kernel reduces across a row's workgroup (workgroup_sum or
    /// workgroup_max), so that subgroup operations can do it.
    fn reduces_rows(&self) -> bool {
        false
    }
}

/// Declares [`Kernel`], one case per family, with its conversions.
macro_rules! families {
    ($($(#[$doc:meta])* $case:ident($ty:ty),)*) => {
        /// One compiled kernel variant: a family and its variant there.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kernel {
            $($(#[$doc])* $case($ty),)*
        }

        $(impl From<$ty> for Kernel {
            fn from(k: $ty) -> Kernel {
                Kernel::$case(k)
            }
        })*

        impl Kernel {
            fn family(&self) -> &dyn Family {
                match self {
                    $(Kernel::$case(k) => k,)*
                }
            }
        }
    };
}

families! {
    Matmul(matmul::Matmul),
    Norm(norm::RowNorm),
    Dora(dora::Dora),
    Elementwise(elementwise::Elementwise),
    Reduce(reduce::Reduce),
    Softmax(softmax::Softmax),
    Loss(loss::Loss),
    AdamW(adamw::AdamW),
    Embedding(embedding::Embedding),
    Rope(rope::Rope),
    Columns(columns::CopyCols),
    Attention(attention::Attention),
    FlashAttention(flash_attention::FlashAttention),
    RmsNorm(rmsnorm::RmsNorm),
    Bench(bench::FmaPeak),
}

impl Kernel {
    /// A unique name for the variant (the family's own `Debug`): the
    /// pipeline cache key and the profile's row.
    pub fn label(&self) -> String {
        format!("{:?}", self.family())
    }

    pub fn entry(&self) -> &'static str {
        self.family().entry()
    }

    /// The storage bindings the entry point uses, as (binding, access) in the
    /// order a dispatch passes its buffers. Binding 0 is always the parameters.
    pub fn bindings(&self) -> &'static [(u32, Access)] {
        self.family().bindings()
    }

    /// The parameter struct a dispatch of this variant uploads.
    pub fn params(&self) -> ParamsLayout {
        self.family().params()
    }

    /// Whether the kernel reduces across a row's workgroup (workgroup_sum or
    /// workgroup_max), so that subgroup operations can do it.
    pub fn reduces_rows(&self) -> bool {
        self.family().reduces_rows()
    }

    /// The WGSL `enable` directives the variant needs (they must open the
    /// module): f16 and cooperative matrices for the cooperative matmul.
    pub fn enables(&self) -> &'static str {
        self.family().enables()
    }

    /// The full WGSL source of this variant, for a device without subgroup
    /// operations.
    pub fn source(&self) -> String {
        self.source_for(false)
    }

    /// The full WGSL source of this variant; with `subgroups` (a device with
    /// `Features::SUBGROUP`), kernels that reduce across a row's workgroup do
    /// it with subgroup operations (row_reduce_subgroups.wgsl).
    pub fn source_for(&self, subgroups: bool) -> String {
        let family = self.family();
        // Only kernels that reduce rows (their entry points take a RowLane)
        // use subgroup operations. naga 30 takes them without WGSL's
        // `enable subgroups;` (it refuses that directive); the device's
        // `Features::SUBGROUP` is what allows them.
        let reduce = if subgroups && family.reduces_rows() {
            shared::ROW_REDUCE_SUBGROUPS
        } else {
            shared::ROW_REDUCE
        };
        format!(
            "{}// variant: {}\n{}{}\n{}\n{reduce}\n{}",
            family.enables(),
            self.label(),
            family.params().wgsl,
            family.header(),
            shared::COMMON,
            family.body()
        )
    }

    /// Every kernel variant the library can launch: each family's list.
    pub fn all() -> Vec<Kernel> {
        [
            matmul::variants(),
            norm::variants(),
            dora::variants(),
            elementwise::variants(),
            reduce::variants(),
            softmax::variants(),
            loss::variants(),
            adamw::variants(),
            embedding::variants(),
            rope::variants(),
            columns::variants(),
            attention::variants(),
            flash_attention::variants(),
            rmsnorm::variants(),
            bench::variants(),
        ]
        .concat()
    }
}

impl Program for Kernel {
    fn label(&self) -> String {
        Kernel::label(self)
    }
    fn entry(&self) -> &'static str {
        Kernel::entry(self)
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        Kernel::bindings(self)
    }
    fn source_for(&self, subgroups: bool) -> String {
        Kernel::source_for(self, subgroups)
    }
}

/// Records one dispatch of `kernel` over `tensors` (in its bindings' order).
/// `P` must be the struct the variant declares (checked in debug builds).
pub(crate) fn launch<P: Params>(
    kernel: impl Into<Kernel>,
    params: &P,
    tensors: &[&Tensor],
    workgroups: [u32; 3],
) -> Result<()> {
    let kernel = kernel.into();
    debug_assert_eq!(P::WGSL, kernel.params().wgsl, "{}", kernel.label());
    let gpu = tensors[0].gpu();
    let buffers: Vec<_> = tensors.iter().map(|t| t.buf()).collect();
    gpu.dispatch(&kernel, bytemuck::bytes_of(params), &buffers, workgroups)
}

/// A grid of `n` workgroups (for one-workgroup-per-row kernels).
pub(crate) fn groups(n: usize) -> [u32; 3] {
    grid(n as u32)
}

/// A grid covering `n` elements at 256 per workgroup.
pub(crate) fn groups_for_elements(n: usize) -> [u32; 3] {
    grid(n.div_ceil(256) as u32)
}

/// Rows and columns of a tensor seen as a matrix over its last dimension.
pub(crate) fn rows_cols(t: &Tensor) -> (usize, usize) {
    let cols = t.last_dim();
    (t.numel() / cols.max(1), cols)
}

#[cfg(test)]
mod tests {
    /// The device check in `gpu` asks for as many storage buffers as the
    /// hungriest kernel binds.
    #[test]
    fn the_device_check_knows_the_most_bindings_any_kernel_takes() {
        let most = super::Kernel::all()
            .iter()
            .map(|k| k.bindings().len() as u32)
            .max();
        assert_eq!(most, Some(crate::gpu::MAX_STORAGE_BINDINGS));
    }
}
