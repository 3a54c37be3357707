use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ams_agent::host::nss::use_builtin_lookups_only();
    let cli = ams_agent::cli::Cli::parse();
    ams_agent::logging::init(cli.global.verbosity(), cli.runs_as_certbot_hook());
    match ams_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the step, then its causes, joined by ": ". Values
            // from outside in it (a flag, a file, a server's answer) are
            // escaped, so none can start a line of its own.
            eprintln!("error: {}", ams_agent::human::escape(&format!("{err:#}")));
            ExitCode::from(ams_agent::error::exit_code(&err))
        }
    }
}
