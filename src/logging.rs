//! Logs go to stderr through `tracing`: coloured with a level on a terminal,
//! plain single lines without timestamps otherwise (journald and cloud-init
//! add their own).

use tracing_subscriber::EnvFilter;

pub fn init(verbosity: i8) {
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
    let terminal = crate::host::tty::stderr_is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_target(false);
    let _ = if terminal {
        builder.without_time().try_init()
    } else {
        builder.without_time().with_level(true).try_init()
    };
}
