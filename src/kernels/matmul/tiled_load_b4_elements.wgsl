fn load_b4(i: u32) -> vec4<f32> { return vec4<f32>(load_b(i), load_b(i + 1u), load_b(i + 2u), load_b(i + 3u)); }
