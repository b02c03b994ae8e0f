// One in-place AdamW step, the arithmetic of torch.optim.AdamW:
//   p = p * (1 - lr * wd)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) from the host.
// g is scaled by grad_scale first (gradient clipping, loss scaling).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;

@compute @workgroup_size(256)
fn adamw_step(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale;
    let m = exp_avg[i] + (1.0 - p.beta1) * (g - exp_avg[i]);
    let v = p.beta2 * exp_avg_sq[i] + (1.0 - p.beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let decayed = param[i] * (1.0 - p.lr * p.weight_decay);
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    param[i] = decayed - p.step_size * (m / denom);
}
