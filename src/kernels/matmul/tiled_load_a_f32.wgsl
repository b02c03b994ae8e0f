fn load_a(i: u32) -> f32 { return a[i]; }
fn load_a4(i: u32) -> vec4<f32> { return vec4<f32>(a[i], a[i + 1u], a[i + 2u], a[i + 3u]); }
