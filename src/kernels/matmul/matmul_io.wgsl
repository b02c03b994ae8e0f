// The operands every matmul kernel shares (matmul.wgsl, matmul_skinny.wgsl,
// matmul_broadcast.wgsl, matmul_coop.wgsl), in each variant's header (mod.rs);
// `BWord`, the word B is read in, comes from the header too.

// `Params` is generated from its one declaration in Rust (src/kernels/matmul/mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<BWord>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
