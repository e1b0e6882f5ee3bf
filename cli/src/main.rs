//! `tide`: the command line. Glue only: parse arguments, call the libraries, render.
//! Data goes to stdout, messages to stderr; exit codes are listed in `tide --help`.

mod cli;
mod commands;
mod failure;
mod progress;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match commands::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let f = failure::describe(&e);
            eprintln!("error: {}", f.message);
            if f.unchanged {
                eprintln!("  Nothing was changed.");
            }
            if let Some(next) = f.next {
                eprintln!("  Next: {next}");
            }
            ExitCode::from(f.code)
        }
    }
}
