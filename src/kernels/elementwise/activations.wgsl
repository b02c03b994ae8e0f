// SiLU's derivative, and GELU (tanh approximation) with its derivative,
// through common.wgsl's `tanh_clamped` (no backend's tanh overflows to NaN
// for large |x|).
fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

const GELU_C: f32 = 0.7978845608028654; // √(2/π)
fn gelu_tanh_t(x: f32) -> f32 {
    return tanh_clamped(GELU_C * (x + 0.044715 * x * x * x));
}
fn gelu_tanh(x: f32) -> f32 { return 0.5 * x * (1.0 + gelu_tanh_t(x)); }
fn gelu_tanh_grad(x: f32) -> f32 {
    let t = gelu_tanh_t(x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
}
