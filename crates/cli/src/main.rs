//! `sentia`: run everything locally (`sentia dev`), read and write secrets (`sentia secret`),
//! log in (`sentia login`, `sentia token`), operate key-service (`sentia key`) and rotation
//! (`sentia rotation`).

mod agent;
mod alert;
mod audit;
mod backup;
mod conn;
mod dev;
mod export;
mod key;
mod kms_plugin;
mod ops;
mod policy;
mod rotation;
mod secret;
mod token;

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
    /// Read, write and manage secrets.
    Secret(secret::SecretArgs),
    /// Exchange an app credential for a token (prints the token).
    Login(token::LoginArgs),
    /// Inspect and revoke tokens; create app credentials.
    Token(token::TokenArgs),
    /// Query, tail, export and verify the audit log.
    Audit(audit::AuditArgs),
    /// Manage key-service keys and seal state.
    Key(key::KeyArgs),
    /// Rotation policies, status, on-demand rotation and history.
    Rotation(rotation::RotationArgs),
    /// Back up, check and restore the whole deployment.
    Backup(backup::BackupArgs),
    /// Hand secrets to a program: in its environment (`run`) or in files from templates
    /// (`render`), following changes.
    Agent(agent::AgentArgs),
    /// List and acknowledge the alerts audit-service raised.
    Alert(alert::AlertArgs),
    /// Test access against the loaded policies or a policy file (the policy simulator).
    Policy(policy::PolicyArgs),
    /// Serve the Kubernetes KMS v2 plugin API on a unix socket, encrypting with key-service.
    KmsPlugin(kms_plugin::KmsPluginArgs),
    /// Check a server's gRPC health (for container health checks).
    Health(ops::HealthArgs),
    /// Make a CA and service certificates for a first deployment.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Write ca.pem and a certificate and key per name, unless ca.pem exists.
    Init(ops::PkiArgs),
}

/// Exit status of a command whose reader went away (`sentia key status | head -1`): what a
/// process killed by SIGPIPE reports in a shell, as coreutils do.
const BROKEN_PIPE_EXIT: i32 = 141;

/// `println!` panics when stdout is a closed pipe. That is not a bug to report: leave quietly,
/// without the panic message or a backtrace, as other command-line tools do.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Secret(args) => secret::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::KmsPlugin(args) => kms_plugin::run(args).await,
        Command::Alert(args) => alert::run(args).await,
        Command::Policy(args) => match policy::run(args).await {
            // A denial is an answer, not an error: printed, and the exit status says it.
            Ok(false) => return std::process::ExitCode::FAILURE,
            other => other.map(|_| ()),
        },
        Command::Login(args) => token::login(args).await,
        Command::Token(args) => token::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Key(args) => key::run(args).await,
        Command::Rotation(args) => rotation::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Health(args) => ops::health(args).await,
        Command::Pki(PkiCommand::Init(args)) => ops::pki_init(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentia: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_declares_its_arguments_consistently() {
        // clap checks names, conflicts and requirements only when a command is built; this
        // builds them all, so a clash fails here rather than in a user's shell.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn rotation_set_help_names_every_rotator() {
        let mut cli = <super::Cli as clap::CommandFactory>::command();
        let set = cli
            .find_subcommand_mut("rotation")
            .and_then(|r| r.find_subcommand_mut("set"))
            .map(|s| s.render_long_help().to_string())
            .unwrap_or_default();
        for name in rotation_scheduler::rotator::NAMES {
            assert!(
                set.contains(name),
                "`rotation set --help` omits {name}:\n{set}"
            );
        }
    }
}
