// The fused DoRA epilogue: each output column scaled, then the bias added.
@group(0) @binding(4) var<storage, read> col_scale: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
fn epilogue(v: f32, col: u32) -> f32 {
    var r = v * col_scale[col];
    if (p.has_bias != 0u) {
        r = r + bias[col];
    }
    return r;
}
