//! The `dpgan` command. Parsing and the commands live in `cli/`; this file only turns an error into
//! `error: ...` on stderr and a non-zero exit code, the one place the program decides to stop.
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
