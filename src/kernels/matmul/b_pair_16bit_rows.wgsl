// b[k*N + n], 16-bit: one word holds columns n and n+1.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let w = bi >> 1u;
    let v = (bi + sk) >> 1u;
    return BPair(
        vec4<f32>(unpack_pair(b[w]), unpack_pair(b[w + 1u])),
        vec4<f32>(unpack_pair(b[w + 2u]), unpack_pair(b[w + 3u])),
        vec4<f32>(unpack_pair(b[v]), unpack_pair(b[v + 1u])),
        vec4<f32>(unpack_pair(b[v + 2u]), unpack_pair(b[v + 3u])),
    );
}
