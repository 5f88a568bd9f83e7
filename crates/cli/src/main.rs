//! `sentia`: run everything locally (`sentia dev`) and operate key-service (`sentia key ...`).

mod dev;
mod key;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sentia",
    version,
    about = "Sentia Secrets: operator CLI and all-in-one dev mode"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process on SQLite, for local development only.
    Dev(dev::DevArgs),
    /// Manage key-service keys and seal state.
    Key(key::KeyArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Key(args) => key::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentia: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
