// An f32 B read as vec4s (the weight loader's f32 `BWord` is a scalar).
alias BWord = vec4<f32>;
fn load_b(i: u32) -> f32 { return b[i >> 2u][i & 3u]; }
