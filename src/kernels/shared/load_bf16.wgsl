// bf16 values two per u32, the lower-indexed one in the low half
// (placeholders as in load_f32.wgsl).
alias {word} = u32;
fn {load}(i: u32) -> f32 {
    let v = {array}[i >> 1u];
    return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i & 1u) == 1u));
}
