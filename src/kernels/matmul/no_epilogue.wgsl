// A plain product: no column scale, no bias, no bindings for them.
fn epilogue(v: f32, col: u32) -> f32 { return v; }
