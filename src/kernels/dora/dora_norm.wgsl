// DoRA's row norm without the dense update (the factored path), in one pass:
//   n_i² = ||W_i||² + 2s · Σ_k B_ik · (A·W_iᵀ)_k + s² · Σ_kl B_ik · G_kl · B_il
// with AW = A·Wᵀ [r, out] and the Gram matrix G = A·Aᵀ [r, r] computed by
// matmuls beforehand, and ||W_i||² cached (W is frozen). One invocation per
// row: r is small (rank), so each row's two sums are short loops.

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> aw: array<f32>;
@group(0) @binding(2) var<storage, read> lora_b: array<f32>;
@group(0) @binding(3) var<storage, read> gram: array<f32>;
@group(0) @binding(4) var<storage, read> w_sq: array<f32>;
@group(0) @binding(5) var<storage, read_write> norms: array<f32>;

@compute @workgroup_size(256)
fn factored_norm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.rows) {
        return;
    }
    let r = p.rank;
    var cross = 0.0;
    var quad = 0.0;
    for (var k = 0u; k < r; k++) {
        let bik = lora_b[i * r + k];
        cross = fma(bik, aw[k * p.rows + i], cross);
        var gb = 0.0;
        for (var l = 0u; l < r; l++) {
            gb = fma(gram[k * r + l], lora_b[i * r + l], gb);
        }
        quad = fma(bik, gb, quad);
    }
    let s = p.scale;
    // Rounding can push a (near-)zero row slightly negative.
    norms[i] = sqrt(max(w_sq[i] + 2.0 * s * cross + s * s * quad, 0.0));
}
