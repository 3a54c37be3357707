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

/// The terminal settings to restore if Ctrl-C interrupts [`read_secret`].
static SAVED_TERMIOS: std::sync::OnceLock<libc::termios> = std::sync::OnceLock::new();

extern "C" fn restore_and_die(sig: libc::c_int) {
    // Only async-signal-safe calls: put echo back, then die of the signal
    // as if we had no handler.
    if let Some(t) = SAVED_TERMIOS.get() {
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Asks for a secret on the terminal without echoing it. One line is read;
/// the echo is restored afterwards, also when Ctrl-C interrupts.
pub fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::{BufRead as _, Write as _};

    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin).context("reading the terminal settings")?;
    let _ = SAVED_TERMIOS.set(original.clone().into());
    let handler = nix::sys::signal::SigHandler::Handler(restore_and_die);
    let action = nix::sys::signal::SigAction::new(
        handler,
        nix::sys::signal::SaFlags::SA_RESETHAND,
        nix::sys::signal::SigSet::empty(),
    );
    let mut previous = Vec::new();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGQUIT,
    ] {
        // SAFETY: the handler only makes async-signal-safe calls.
        if let Ok(old) = unsafe { nix::sys::signal::sigaction(sig, &action) } {
            previous.push((sig, old));
        }
    }
    let mut quiet = original.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    // Echo off before the prompt shows: whoever answers the prompt at once
    // (a fast typist, a test) never has the answer echoed.
    let read = tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)
        .context("turning off the terminal echo")
        .and_then(|()| {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("reading from the terminal")?;
            Ok(line)
        });
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &original);
    for (sig, old) in previous {
        // SAFETY: puts back the handlers that were there before.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &old) };
    }
    restored.context("restoring the terminal echo")?;
    let mut line = read?;
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Asks a question on the terminal; an empty answer takes `default`.
pub fn ask(question: &str, default: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::{BufRead as _, Write as _};
    if default.is_empty() {
        eprint!("{question}: ");
    } else {
        eprint!("{question} [{default}]: ");
    }
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading from the terminal")?;
    if n == 0 {
        anyhow::bail!("the terminal closed before {question} was answered");
    }
    let answer = line.trim();
    Ok(if answer.is_empty() {
        default.to_string()
    } else {
        answer.to_string()
    })
}
