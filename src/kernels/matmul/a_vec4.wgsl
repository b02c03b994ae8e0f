// A read as vec4s (the tiled kernel, where its contiguous dimension allows).
alias AWord = vec4<f32>;
