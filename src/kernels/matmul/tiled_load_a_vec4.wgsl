fn load_a(i: u32) -> f32 { return a[i >> 2u][i & 3u]; }
fn load_a4(i: u32) -> vec4<f32> { return a[i >> 2u]; }
