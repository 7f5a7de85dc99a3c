//! The `dpgan` command. Parsing and the commands live in `cli/`; this file only turns an error into
//! `error: ...` on stderr and a non-zero exit code, the one place the program decides to stop.
use std::process::ExitCode;

use clap::Parser;

mod cli;

/// Exit statuses: 0 finished; 1 failed; 2 bad arguments (clap); 3 stopped at the ε budget;
/// 130 / 143 stopped by SIGINT / SIGTERM with a checkpoint to resume from.
fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(dpgan::Error::Stopped { code, msg }) => {
            eprintln!("{msg}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
