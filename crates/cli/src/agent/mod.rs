//! `sentia agent`: how a workload in any language gets its secrets without an SDK. `run` hands
//! them to a program through its environment only (never its arguments, never a file) and
//! restarts or signals it when one changes; `render` writes them into files from templates
//! ([`render`]). Both log in by app credential or Kubernetes service account and renew their
//! token by themselves.

mod render;
mod template;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sentia_client::{Client, Credential, Fresh, Renewal};
use tokio::process::{Child, Command};
use zeroize::Zeroizing;

use crate::conn::VaultConn;

/// `sentia agent …`.
#[derive(Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Start CMD with secrets in its environment; restart or signal it when one changes.
    Run(RunArgs),
    /// Write secrets into files from templates; re-render when one changes.
    Render(render::RenderArgs),
}

/// `sentia agent run`.
#[derive(Args)]
struct RunArgs {
    /// `NAME=PATH`: the CURRENT value of secret PATH becomes variable NAME of the program
    /// (repeat for more).
    #[arg(long = "secret", value_name = "NAME=PATH", required = true)]
    secrets: Vec<String>,
    /// What a change of any of the secrets does to the program: `restart` (SIGTERM, then
    /// start it again with the new values), `signal:NAME` (e.g. `signal:HUP`; the program
    /// rereads what it needs), or `none`.
    #[arg(long, default_value = "restart")]
    on_change: String,
    /// How long a program stopped for a restart (or when the agent is stopped) has to exit
    /// after SIGTERM before it is killed.
    #[arg(long, default_value = "10s", value_parser = duration)]
    grace: Duration,
    #[command(flatten)]
    login: AgentLogin,
    #[command(flatten)]
    conn: VaultConn,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// How the agent logs in. It renews its token by itself before expiry; with neither an app
/// credential nor a Kubernetes role it uses `--token` / `SENTIA_TOKEN` as given.
#[derive(Args)]
struct AgentLogin {
    /// File holding the app credential's role id (with `--secret-id-file`).
    #[arg(
        long,
        env = "SENTIA_ROLE_ID_FILE",
        requires = "secret_id_file",
        conflicts_with = "k8s_role"
    )]
    role_id_file: Option<PathBuf>,
    /// File holding the app credential's secret id.
    #[arg(long, env = "SENTIA_SECRET_ID_FILE", requires = "role_id_file")]
    secret_id_file: Option<PathBuf>,
    /// Kubernetes login role (a key of the policy file's `[kubernetes.roles]`): the agent
    /// logs in with the pod's projected service-account token.
    #[arg(long, env = "SENTIA_K8S_ROLE")]
    k8s_role: Option<String>,
    /// The projected service-account token (audience as the policy file's `[kubernetes]`
    /// audiences), read again at each renewal since the kubelet replaces it.
    #[arg(
        long,
        env = "SENTIA_K8S_TOKEN_FILE",
        default_value = "/var/run/secrets/sentia/token"
    )]
    k8s_token_file: PathBuf,
}

impl AgentLogin {
    /// The credential to log in with, if one is configured.
    fn credential(&self) -> anyhow::Result<Option<Credential>> {
        if let Some(role) = &self.k8s_role {
            return Ok(Some(Credential::Kubernetes {
                role: role.clone(),
                token_file: self.k8s_token_file.clone(),
            }));
        }
        let (Some(role), Some(secret)) = (&self.role_id_file, &self.secret_id_file) else {
            return Ok(None);
        };
        let read = |p: &Path| -> anyhow::Result<Zeroizing<String>> {
            let raw = Zeroizing::new(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            );
            Ok(Zeroizing::new(raw.trim().to_string()))
        };
        Ok(Some(Credential::App {
            role_id: read(role)?.to_string(),
            secret_id: read(secret)?,
        }))
    }

    /// The client: logged in (and renewed by the SDK), or carrying the token `conn` has.
    async fn client(&self, conn: &VaultConn) -> anyhow::Result<Client> {
        let Some(credential) = self.credential()? else {
            return conn.client().await;
        };
        let tls = conn.common.tls()?;
        let (client, _) =
            Client::login_with(&conn.addr, credential, tls.as_ref(), Renewal::default())
                .await
                .with_context(|| format!("logging in at vault-service {}", conn.addr))?;
        Ok(client)
    }
}

fn duration(raw: &str) -> Result<Duration, String> {
    sentia_runtime::config::parse_duration(raw)
        .ok_or_else(|| format!("{raw:?} is not a duration such as 10s or 1m"))
}

/// What a change does to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnChange {
    Restart,
    Signal(Signal),
    Nothing,
}

impl std::str::FromStr for OnChange {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> anyhow::Result<Self> {
        match raw {
            "restart" => Ok(Self::Restart),
            "none" => Ok(Self::Nothing),
            _ => {
                let name = raw.strip_prefix("signal:").with_context(|| {
                    format!(
                        "--on-change {raw:?}: give restart, signal:NAME (e.g. signal:HUP) or none"
                    )
                })?;
                let full = format!("SIG{}", name.trim_start_matches("SIG"));
                full.parse::<Signal>()
                    .map(Self::Signal)
                    .map_err(|_| anyhow::anyhow!("--on-change {raw:?}: {name} is not a signal"))
            }
        }
    }
}

/// `NAME=PATH`, checked: NAME is a portable variable name.
fn binding(raw: &str) -> anyhow::Result<(String, String)> {
    let (name, path) = raw
        .split_once('=')
        .with_context(|| format!("--secret {raw:?}: give NAME=PATH"))?;
    let portable = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    anyhow::ensure!(
        portable && !path.is_empty(),
        "--secret {raw:?}: NAME must be letters, digits and _ (not starting with a digit), PATH \
         a secret path"
    );
    Ok((name.to_string(), path.to_string()))
}

/// Runs `sentia agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        AgentCommand::Run(args) => {
            let code = run_program(args).await?;
            std::process::exit(code)
        }
        AgentCommand::Render(args) => {
            let code = render::run(args).await?;
            std::process::exit(code)
        }
    }
}

/// Starts the program and keeps it running with current values; returns its exit code.
async fn run_program(args: RunArgs) -> anyhow::Result<i32> {
    let on_change: OnChange = args.on_change.parse()?;
    let bindings = args
        .secrets
        .iter()
        .map(|s| binding(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = args.login.client(&args.conn).await?;
    let mut fresh = Vec::new();
    for (name, path) in &bindings {
        let kept = client
            .keep_fresh(path)
            .await
            .with_context(|| format!("reading {path} (for {name})"))?;
        fresh.push((name.clone(), kept));
    }
    let mut child = spawn(&args.command, &fresh)?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // Cleared when watching fails for good: the program keeps the values it has.
    let mut watching = true;
    loop {
        let event = {
            let changed = async {
                if !watching {
                    return std::future::pending().await;
                }
                next_change(&mut fresh).await
            };
            tokio::select! {
                status = child.wait() => Event::Exited(status?.code().unwrap_or(1)),
                _ = terminate.recv() => Event::Stop,
                _ = interrupt.recv() => Event::Stop,
                change = changed => Event::Changed(change),
            }
        };
        match event {
            Event::Exited(code) => return Ok(code),
            Event::Stop => return stop(&mut child, args.grace).await,
            Event::Changed(Err(e)) => {
                eprintln!(
                    "sentia agent: watching the secrets stopped ({e}); the program keeps the \
                     values it has, and a restart of the agent follows changes again"
                );
                watching = false;
            }
            Event::Changed(Ok(secret)) => {
                eprintln!(
                    "sentia agent: {} changed (version {})",
                    secret.path, secret.version
                );
                match on_change {
                    OnChange::Restart => {
                        stop(&mut child, args.grace).await?;
                        child = spawn(&args.command, &fresh)?;
                    }
                    OnChange::Signal(signal) => send(&child, signal)?,
                    OnChange::Nothing => {}
                }
            }
        }
    }
}

/// What the agent waits for.
enum Event {
    /// The program exited with this code.
    Exited(i32),
    /// The agent was told to stop (SIGTERM, SIGINT).
    Stop,
    /// A secret changed, or watching failed for good.
    Changed(Result<sentia_client::Secret, sentia_client::ClientError>),
}

/// The next change of any of the secrets kept fresh (each named by a key of the caller's).
async fn next_change<K>(
    fresh: &mut [(K, Fresh)],
) -> Result<sentia_client::Secret, sentia_client::ClientError> {
    futures_util::future::select_all(fresh.iter_mut().map(|(_, f)| Box::pin(f.changed())))
        .await
        .0
}

/// The agent's own credentials, which its environment may hold: the program gets the secrets
/// it was given, never the means to fetch others.
const CREDENTIALS: [&str; 5] = [
    "SENTIA_TOKEN",
    "SENTIA_ROLE_ID",
    "SENTIA_SECRET_ID",
    "SENTIA_ROLE_ID_FILE",
    "SENTIA_SECRET_ID_FILE",
];

/// Starts `command` with each secret's current value in its environment, and without the
/// agent's credentials.
fn spawn(command: &[String], fresh: &[(String, Fresh)]) -> anyhow::Result<Child> {
    let (program, rest) = command.split_first().context("no program to run")?;
    let mut cmd = Command::new(program);
    cmd.args(rest).kill_on_drop(true);
    for name in CREDENTIALS {
        cmd.env_remove(name);
    }
    for (name, kept) in fresh {
        let secret = kept.current();
        cmd.env(name, OsStr::from_bytes(secret.expose()));
    }
    cmd.spawn().with_context(|| format!("starting {program}"))
}

fn send(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let Some(pid) = child.id() else {
        return Ok(());
    };
    let pid = i32::try_from(pid).context("process id out of range")?;
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .with_context(|| format!("sending {signal} to the program"))
}

/// SIGTERM, then SIGKILL after `grace`; returns the exit code.
async fn stop(child: &mut Child, grace: Duration) -> anyhow::Result<i32> {
    send(child, Signal::SIGTERM)?;
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            child.start_kill()?;
            child.wait().await?
        }
    };
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_reads_restart_signals_and_none_and_names_what_is_wrong() {
        assert_eq!("restart".parse::<OnChange>().ok(), Some(OnChange::Restart));
        assert_eq!("none".parse::<OnChange>().ok(), Some(OnChange::Nothing));
        assert_eq!(
            "signal:HUP".parse::<OnChange>().ok(),
            Some(OnChange::Signal(Signal::SIGHUP))
        );
        assert_eq!(
            "signal:SIGUSR1".parse::<OnChange>().ok(),
            Some(OnChange::Signal(Signal::SIGUSR1))
        );
        let bad = "signal:NOPE"
            .parse::<OnChange>()
            .err()
            .map(|e| e.to_string());
        assert!(bad.is_some_and(|m| m.contains("NOPE is not a signal")));
        let bad = "reload".parse::<OnChange>().err().map(|e| e.to_string());
        assert!(bad.is_some_and(|m| m.contains("restart, signal:NAME")));
    }

    #[test]
    fn bindings_need_a_portable_name_and_a_path() {
        assert_eq!(
            binding("DB_PASSWORD=prod/app/db").ok(),
            Some(("DB_PASSWORD".into(), "prod/app/db".into()))
        );
        for bad in ["nopath", "1X=a/b/c", "A-B=a/b/c", "X=", "=a/b/c"] {
            assert!(binding(bad).is_err(), "{bad}");
        }
    }
}
