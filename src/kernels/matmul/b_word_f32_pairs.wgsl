// An f32 B transposed, K even: words of k and k+1 of a column, as they are.
alias BWord = vec2<f32>;
fn unpack_pair(v: vec2<f32>) -> vec2<f32> { return v; }
