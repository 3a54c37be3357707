use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ams_agent::host::nss::use_builtin_lookups_only();
    let cli = ams_agent::cli::Cli::parse();
    ams_agent::logging::init(cli.global.verbosity());
    match ams_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the step, then its causes, joined by ": ".
            eprintln!("error: {err:#}");
            ExitCode::from(ams_agent::error::exit_code(&err))
        }
    }
}
