// Rows k and k+1 of op(B) element by element, through the weight loader's
// load_b (f32 in any layout, or blocks).
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let j = bi + sk;
    return BPair(
        vec4<f32>(load_b(bi), load_b(bi + sn), load_b(bi + 2u * sn), load_b(bi + 3u * sn)),
        vec4<f32>(load_b(bi + 4u * sn), load_b(bi + 5u * sn), load_b(bi + 6u * sn), load_b(bi + 7u * sn)),
        vec4<f32>(load_b(j), load_b(j + sn), load_b(j + 2u * sn), load_b(j + 3u * sn)),
        vec4<f32>(load_b(j + 4u * sn), load_b(j + 5u * sn), load_b(j + 6u * sn), load_b(j + 7u * sn)),
    );
}
