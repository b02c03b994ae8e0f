// llama.cpp's blocks as stored, decoded by quant.wgsl's `dequant_{quant}`
// (placeholders as in load_f32.wgsl).
alias {word} = u32;
fn q_word(word: u32) -> u32 { return {array}[word]; }
fn {load}(i: u32) -> f32 { return dequant_{quant}(i); }
