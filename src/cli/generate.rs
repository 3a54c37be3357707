//! Hidden: writes the man pages and shell completions generated from the
//! clap definitions (used by the package build).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate
    #[arg(value_enum)]
    pub what: Artifact,
    /// Output folder
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Artifact {
    Man,
    Completions,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let cmd = Cli::command();
    match args.what {
        Artifact::Man => clap_mangen::generate_to(cmd, &args.dir)
            .with_context(|| format!("writing man pages to {}", args.dir.display())),
        Artifact::Completions => {
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut Cli::command(), "ams-agent", &args.dir)
                    .with_context(|| format!("writing {shell} completions"))?;
            }
            Ok(())
        }
    }
}
