// IEEE half bits -> f32, with integer ops only: unpack2x16float needs a
// capability some GL drivers lack.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        let v = f32(mantissa) * 5.9604645e-8; // subnormal: mantissa * 2^-24
        return select(v, -v, sign != 0u);
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}
