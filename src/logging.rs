//! Logs go to stderr through `tracing`: coloured with a level on a terminal,
//! plain single lines without timestamps otherwise (journald and cloud-init
//! add their own).

use tracing_subscriber::EnvFilter;

/// `progress_to_stdout`: run as certbot's deploy hook, where certbot logs
/// anything on stderr as "ran with error output": logs below ERROR go to
/// stdout, errors (and the final `error:` line) still to stderr.
pub fn init(verbosity: i8, progress_to_stdout: bool) {
    let default = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // The driver's own chatter stays quiet unless asked for with RUST_LOG.
    let filter = EnvFilter::try_from_env("AMS_AGENT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("{default},mongodb=warn,hyper=warn,reqwest=warn"))
    });
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
    let terminal = crate::host::tty::stderr_is_terminal();
    let writer = if progress_to_stdout {
        BoxMakeWriter::new(
            std::io::stderr
                .with_max_level(tracing::Level::ERROR)
                .or_else(std::io::stdout),
        )
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal && !progress_to_stdout)
        .with_target(false);
    let _ = if terminal {
        builder.without_time().try_init()
    } else {
        builder.without_time().with_level(true).try_init()
    };
}
