// The operands every matmul kernel shares (matmul_tiled.wgsl, matmul_skinny.wgsl,
// matmul_broadcast.wgsl, matmul_coop.wgsl), in each variant's header (mod.rs);
// `AWord` and `BWord`, the words A and B are read in, come from the header too.

// `Params` is generated from its one declaration in Rust (src/kernels/matmul/mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<AWord>;
@group(0) @binding(2) var<storage, read> b: array<BWord>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
