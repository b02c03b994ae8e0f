// A weight operand read element by element: `{word}` is its array's element
// type, `{load}(i)` element i as f32, `{array}` the binding (names filled in
// by `shared::weight_loader`, so one kernel can hold two such operands).
alias {word} = f32;
fn {load}(i: u32) -> f32 { return {array}[i]; }
