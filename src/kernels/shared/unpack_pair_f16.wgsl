// The two f16 values of a word, low half first.
fn unpack_pair(v: u32) -> vec2<f32> {
    return vec2<f32>(f16_to_f32(v & 0xffffu), f16_to_f32(v >> 16u));
}
