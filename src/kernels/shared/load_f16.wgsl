// f16 values two per u32, the lower-indexed one in the low half
// (placeholders as in load_f32.wgsl).
alias {word} = u32;
fn {load}(i: u32) -> f32 {
    return f16_to_f32(({array}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);
}
