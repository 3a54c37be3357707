//! Terminal detection: prompts and progress bars only when a person is there.

use std::io::IsTerminal;

/// True when stdin is a terminal, so asking a question can get an answer.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

/// True when stderr is a terminal, so progress bars and colours are welcome.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
