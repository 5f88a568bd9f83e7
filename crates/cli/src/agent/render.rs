//! `sentia agent render`: secrets written into files from templates — for programs that read
//! a config file, and for a Kubernetes sidecar sharing an in-memory volume with its pod. Each
//! file is replaced atomically (written beside it, synced, renamed over it) with mode 0600 by
//! default, re-rendered when a secret it uses changes, and followed by its command; `--once`
//! renders and exits (an init container).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sentia_client::Fresh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::template::Template;
use super::{AgentLogin, CREDENTIALS, next_change};
use crate::conn::VaultConn;

/// How long a command run after a render may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `sentia agent render`.
#[derive(Args)]
pub(super) struct RenderArgs {
    /// The agent's configuration: `[[template]]` tables (see the README).
    #[arg(long, env = "SENTIA_AGENT_CONFIG")]
    config: PathBuf,
    /// Render every file once and exit (an init container, a cron job).
    #[arg(long)]
    once: bool,
    /// Check the configuration and its templates, print what they read, and exit without
    /// logging in (for CI and reviews of agent configurations).
    #[arg(long, conflicts_with = "once")]
    check: bool,
    /// Serve health on this address (`GET` any path): 200 while every file is rendered and
    /// the secrets are being followed, 503 otherwise.
    #[arg(long, env = "SENTIA_AGENT_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    #[command(flatten)]
    login: AgentLogin,
    #[command(flatten)]
    conn: VaultConn,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "template")]
    templates: Vec<TemplateFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    source: Option<PathBuf>,
    contents: Option<String>,
    destination: PathBuf,
    mode: Option<String>,
    #[serde(default)]
    command: Vec<String>,
}

/// One file the agent keeps rendered.
struct Target {
    template: Template,
    destination: PathBuf,
    mode: u32,
    command: Vec<String>,
    /// Digest of what was last written, so an unchanged render rewrites nothing.
    last: Option<[u8; 32]>,
}

/// A file mode for a secret: octal, with nothing for others.
fn mode(raw: Option<&str>) -> anyhow::Result<u32> {
    let Some(raw) = raw else {
        return Ok(0o600);
    };
    let m = u32::from_str_radix(raw.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("mode {raw:?} is not an octal file mode such as \"0600\""))?;
    anyhow::ensure!(
        m & 0o007 == 0,
        "mode {raw:?} lets every user of the machine read the secret; use 0600, 0640 or 0440"
    );
    anyhow::ensure!(
        m & 0o400 != 0,
        "mode {raw:?} leaves the owner unable to read the file"
    );
    Ok(m)
}

/// Reads the configuration; templates given by `source` are relative to its directory.
fn load(path: &Path) -> anyhow::Result<Vec<Target>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("{}: not an agent configuration", path.display()))?;
    anyhow::ensure!(
        !raw.templates.is_empty(),
        "{}: no [[template]] to render",
        path.display()
    );
    let base = path.parent().unwrap_or(Path::new("."));
    let mut targets = Vec::new();
    let mut destinations = BTreeSet::new();
    for (i, t) in raw.templates.into_iter().enumerate() {
        let at = format!(
            "{} template {} ({})",
            path.display(),
            i + 1,
            t.destination.display()
        );
        let text = match (t.source, t.contents) {
            (Some(source), None) => {
                let source = base.join(source);
                std::fs::read_to_string(&source)
                    .with_context(|| format!("{at}: reading {}", source.display()))?
            }
            (None, Some(contents)) => contents,
            _ => anyhow::bail!("{at}: give exactly one of source and contents"),
        };
        let template = Template::parse(&text).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        anyhow::ensure!(
            !template.paths().is_empty(),
            "{at}: the template reads no secret"
        );
        anyhow::ensure!(
            destinations.insert(t.destination.clone()),
            "{at}: another template writes the same file"
        );
        targets.push(Target {
            template,
            destination: t.destination,
            mode: mode(t.mode.as_deref()).with_context(|| at.clone())?,
            command: t.command,
            last: None,
        });
    }
    Ok(targets)
}

/// Writes `bytes` to `dest` so a reader sees the old file or the new one, never a part: a
/// temporary file beside it (created with `mode`, so the secret is never readable by others
/// even for an instant), synced, then renamed over it.
fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| std::io::Error::other("the destination names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(sentia_crypto::random_bytes(6))
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits away; the configured mode is what is meant.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Renders `target` from the current values; writes and runs its command only if the file's
/// contents change. Returns whether it wrote.
async fn render(target: &mut Target, fresh: &[(String, Fresh)]) -> anyhow::Result<bool> {
    let current: Vec<(String, sentia_client::Secret)> = fresh
        .iter()
        .map(|(path, f)| (path.clone(), f.current()))
        .collect();
    let bytes = target
        .template
        .render(|path| {
            current
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, s)| s.expose())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", target.destination.display()))?;
    let digest = sentia_crypto::sha256(&bytes);
    if target.last == Some(digest) {
        return Ok(false);
    }
    write_atomically(&target.destination, &bytes, target.mode)
        .with_context(|| format!("writing {}", target.destination.display()))?;
    target.last = Some(digest);
    eprintln!("sentia agent: rendered {}", target.destination.display());
    if !target.command.is_empty() {
        run_command(&target.command).await;
    }
    Ok(true)
}

/// Runs a post-render command without the agent's credentials; a failure is reported, never
/// fatal (the file is in place either way).
async fn run_command(command: &[String]) {
    let Some((program, rest)) = command.split_first() else {
        return;
    };
    let mut cmd = Command::new(program);
    cmd.args(rest).kill_on_drop(true);
    for name in CREDENTIALS {
        cmd.env_remove(name);
    }
    let outcome = match cmd.spawn() {
        Ok(mut child) => match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => return,
            Ok(Ok(status)) => format!("exited with {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("was still running after {COMMAND_TIMEOUT:?} and was killed"),
        },
        Err(e) => format!("could not start: {e}"),
    };
    eprintln!("sentia agent: command {program} {outcome}");
}

/// Answers health checks on `addr` from `healthy`, one small request at a time.
async fn serve_health(addr: SocketAddr, healthy: Arc<AtomicBool>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for health checks on {addr}"))?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                // Read the request head (bounded in size and time), then answer.
                let mut head = [0u8; 2048];
                let mut len = 0;
                let read = async {
                    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut head[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
                let (status, body) = if healthy.load(Ordering::SeqCst) {
                    ("200 OK", "ok\n")
                } else {
                    (
                        "503 Service Unavailable",
                        "not rendered or not following changes\n",
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Runs `sentia agent render`; returns the exit code.
pub(super) async fn run(args: RenderArgs) -> anyhow::Result<i32> {
    let mut targets = load(&args.config)?;
    let paths: BTreeSet<String> = targets.iter().flat_map(|t| t.template.paths()).collect();
    if args.check {
        for t in &targets {
            println!(
                "{} (mode {:04o}) reads {}",
                t.destination.display(),
                t.mode,
                t.template
                    .paths()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return Ok(0);
    }
    let client = args.login.client(&args.conn).await?;
    let mut fresh = Vec::new();
    for path in paths {
        let kept = client
            .keep_fresh(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        fresh.push((path, kept));
    }
    for t in &mut targets {
        render(t, &fresh).await?;
    }
    if args.once {
        return Ok(0);
    }
    let healthy = Arc::new(AtomicBool::new(true));
    if let Some(addr) = args.health_addr {
        serve_health(addr, healthy.clone()).await?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut watching = true;
    loop {
        let changed = async {
            if !watching {
                return std::future::pending().await;
            }
            next_change(&mut fresh).await
        };
        let change = tokio::select! {
            _ = terminate.recv() => return Ok(0),
            _ = interrupt.recv() => return Ok(0),
            change = changed => change,
        };
        match change {
            Err(e) => {
                eprintln!(
                    "sentia agent: watching the secrets stopped ({e}); the files keep the values \
                     they have, and health now answers 503"
                );
                healthy.store(false, Ordering::SeqCst);
                watching = false;
            }
            Ok(secret) => {
                eprintln!(
                    "sentia agent: {} changed (version {})",
                    secret.path, secret.version
                );
                let mut failed = false;
                for t in targets
                    .iter_mut()
                    .filter(|t| t.template.paths().contains(&secret.path))
                {
                    if let Err(e) = render(t, &fresh).await {
                        eprintln!("sentia agent: {e:#}; the file keeps its previous contents");
                        failed = true;
                    }
                }
                healthy.store(!failed, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_mode_is_octal_and_never_lets_others_read() {
        assert_eq!(mode(None).unwrap(), 0o600);
        assert_eq!(mode(Some("0640")).unwrap(), 0o640);
        assert_eq!(mode(Some("0o440")).unwrap(), 0o440);
        for (bad, says) in [
            ("0644", "every user"),
            ("rw", "not an octal"),
            ("01777", "not an octal"),
            ("0040", "owner unable"),
        ] {
            let e = mode(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_atomic_write_leaves_only_the_file_with_its_mode() {
        let dir = std::env::temp_dir().join(format!("sentia-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("db.env");
        write_atomically(&dest, b"one", 0o600).unwrap();
        write_atomically(&dest, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["db.env"]);
        assert!(write_atomically(&dir.join("missing/x"), b"x", 0o600).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
