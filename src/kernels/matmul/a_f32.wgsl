// A read element by element.
alias AWord = f32;
