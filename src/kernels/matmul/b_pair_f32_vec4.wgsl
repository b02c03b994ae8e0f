// b[k*N + n], f32, N % 4 == 0: a row's 8 columns are two whole vec4s.
alias BWord = vec4<f32>;
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let w = bi >> 2u;
    let v = (bi + sk) >> 2u;
    return BPair(b[w], b[w + 1u], b[v], b[v + 1u]);
}
