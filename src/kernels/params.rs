//! Kernel parameters, declared once in Rust: [`kernel_params!`] makes the
//! `#[repr(C)]` struct a dispatch uploads and the WGSL `struct Params` the
//! kernel reads, from the same field list. `tests/shaders.rs` checks that
//! naga lays the WGSL struct out as Rust lays out the struct (names, offsets,
//! sizes) for every variant.

/// One field of a parameter struct: its name, byte offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A parameter struct as Rust lays it out, and its WGSL declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamsLayout {
    /// `struct Params { ... }`, prepended to the variant's source.
    pub wgsl: &'static str,
    pub members: Vec<Member>,
    pub size: usize,
}

/// A parameter struct declared with [`kernel_params!`].
pub(crate) trait Params: bytemuck::Pod {
    const WGSL: &'static str;
    fn layout() -> ParamsLayout;
}

/// Declares a kernel's parameter struct: the Rust struct (`#[repr(C)]`,
/// `Pod`, public fields) and its WGSL twin, named `Params` in the shader.
/// Fields are `u32`, `i32` or `f32`, which WGSL spells the same way and lays
/// out as C does (4 bytes, 4-aligned), so no padding can differ.
macro_rules! kernel_params {
    ($(#[$attr:meta])* $vis:vis struct $name:ident {
        $($(#[$field_attr:meta])* $field:ident: $ty:ident,)*
    }) => {
        $(#[$attr])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        impl $crate::kernels::params::Params for $name {
            const WGSL: &'static str = concat!(
                "struct Params {\n",
                $("    ", stringify!($field), ": ", stringify!($ty), ",\n",)*
                "}\n"
            );
            fn layout() -> $crate::kernels::params::ParamsLayout {
                $crate::kernels::params::ParamsLayout {
                    wgsl: Self::WGSL,
                    members: vec![$($crate::kernels::params::Member {
                        name: stringify!($field),
                        offset: std::mem::offset_of!($name, $field),
                        size: std::mem::size_of::<$ty>(),
                    },)*],
                    size: std::mem::size_of::<$name>(),
                }
            }
        }
    };
}
pub(crate) use kernel_params;
