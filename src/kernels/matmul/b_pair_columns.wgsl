// load_b_pair for a transposed B whose words hold k and k+1 of a column
// (`unpack_pair` opens one: two 16-bit values, or a vec2<f32> as it is).
// b[n*K + k], K even: one word holds k and k+1 of a column.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let w = bi >> 1u;
    let s = sn >> 1u;
    let c0 = unpack_pair(b[w]);
    let c1 = unpack_pair(b[w + s]);
    let c2 = unpack_pair(b[w + 2u * s]);
    let c3 = unpack_pair(b[w + 3u * s]);
    let c4 = unpack_pair(b[w + 4u * s]);
    let c5 = unpack_pair(b[w + 5u * s]);
    let c6 = unpack_pair(b[w + 6u * s]);
    let c7 = unpack_pair(b[w + 7u * s]);
    return BPair(
        vec4<f32>(c0.x, c1.x, c2.x, c3.x),
        vec4<f32>(c4.x, c5.x, c6.x, c7.x),
        vec4<f32>(c0.y, c1.y, c2.y, c3.y),
        vec4<f32>(c4.y, c5.y, c6.y, c7.y),
    );
}
