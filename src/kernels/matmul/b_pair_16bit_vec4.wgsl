// b[k*N + n], 16-bit, N % 8 == 0: a row's 8 columns are one vec4 of 16-bit pairs.
alias BWord = vec4<u32>;
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let r0 = b[bi >> 3u];
    let r1 = b[(bi + sk) >> 3u];
    return BPair(
        vec4<f32>(unpack_pair(r0.x), unpack_pair(r0.y)),
        vec4<f32>(unpack_pair(r0.z), unpack_pair(r0.w)),
        vec4<f32>(unpack_pair(r1.x), unpack_pair(r1.y)),
        vec4<f32>(unpack_pair(r1.z), unpack_pair(r1.w)),
    );
}
