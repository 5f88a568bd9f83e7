//! `sentia audit ...`: query, tail, export and verify the audit log. `verify --file` checks an
//! export offline against key-service's checkpoint public keys, naming the first bad record.

use std::collections::HashMap;
use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use sentia_proto::audit::v1::{self as pb, export_item::Item};
use sentia_proto::keys::v1::{GetPublicKeysRequest, key_service_client::KeyServiceClient};
use serde_json::json;

use crate::conn::{AuditConn, Common, status_err, utc};

/// Connection options and the audit subcommand.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: AuditConn,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Events matching filters, oldest first.
    Query {
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this secret or key name.
        #[arg(long)]
        secret: Option<String>,
        /// Only this event type (secret_access, secret_write, login, failed_decryption, ...).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only failures.
        #[arg(long, conflicts_with = "succeeded")]
        failed: bool,
        /// Only successes.
        #[arg(long)]
        succeeded: bool,
        /// Only events newer than this (e.g. 24h, 90d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Compliance access report for a period: per secret, who read and changed it, denied
    /// attempts, failed decryptions and rotations.
    Report {
        /// The period, back from now (e.g. 90d).
        #[arg(long, default_value = "90d")]
        since: String,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Print events as they are appended, until Ctrl-C.
    Tail {
        /// Start after this sequence (0 = only new events).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Write records and checkpoints as JSON lines (for `verify --file`).
    Export {
        /// First sequence (0 = oldest retained).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence (0 = head).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Check the hash chain and checkpoint signatures: of an export file offline (public keys
    /// from key-service), or of a range on the server.
    Verify {
        /// An export (JSON lines) to verify offline.
        #[arg(long)]
        file: Option<String>,
        /// key-service address, for the checkpoint public keys.
        #[arg(long, env = "SENTIA_KEY_ADDR", default_value = "127.0.0.1:8201")]
        key_addr: String,
        /// Token for key-service (a service or admin token).
        #[arg(long, env = "SENTIA_KEY_TOKEN", hide_env_values = true)]
        key_token: Option<String>,
        /// Checkpoint signing key name.
        #[arg(long, default_value = "audit-checkpoint")]
        key_name: String,
        /// First sequence (server verification).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence (server verification).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
}

fn line(r: &pb::AuditRecord) -> String {
    let e = r.event.clone().unwrap_or_default();
    format!(
        "{:>8} {} {:<18} {:<28} {:<18} {:<32} {}",
        r.sequence,
        utc(&e.time),
        e.event_type,
        e.principal,
        e.operation,
        e.secret_name,
        e.status_code
    )
}

fn record_json(r: &pb::AuditRecord) -> String {
    sentia_audit::export::to_line(&pb::ExportItem {
        item: Some(Item::Record(r.clone())),
    })
}

/// Runs an audit subcommand.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let as_json = args.conn.common.json;
    if let AuditCommand::Verify {
        file: Some(file),
        key_addr,
        key_token,
        key_name,
        ..
    } = &args.command
    {
        return verify_file(
            &args.conn.common,
            file,
            key_addr,
            key_token.as_deref(),
            key_name,
        )
        .await;
    }
    let mut c = args.conn.client().await?;
    match args.command {
        AuditCommand::Query {
            principal,
            secret,
            event_type,
            failed,
            succeeded,
            since,
            limit,
        } => {
            let start_time = match since {
                Some(s) => {
                    let d = sentia_runtime::config::parse_duration(&s)
                        .context("--since must look like 24h or 90d")?;
                    let now = sentia_proto::wkt::now_ms();
                    Some(sentia_proto::wkt::timestamp(now - d.as_millis() as i64))
                }
                None => None,
            };
            let success = if failed {
                Some(false)
            } else if succeeded {
                Some(true)
            } else {
                None
            };
            let mut token = String::new();
            let mut shown = 0;
            loop {
                let page = c
                    .query_events(pb::QueryEventsRequest {
                        start_time,
                        end_time: None,
                        principal: principal.clone().unwrap_or_default(),
                        secret_name: secret.clone().unwrap_or_default(),
                        event_type: event_type.clone().unwrap_or_default(),
                        success,
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for r in &page.records {
                    if shown == limit {
                        return Ok(());
                    }
                    println!("{}", if as_json { record_json(r) } else { line(r) });
                    shown += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        AuditCommand::Report { since, format } => {
            let d = sentia_runtime::config::parse_duration(&since)
                .context("--since must look like 30d or 90d")?;
            let start =
                sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms() - d.as_millis() as i64);
            let mut rows: std::collections::BTreeMap<String, ReportRow> = Default::default();
            let mut token = String::new();
            loop {
                let page = c
                    .query_events(pb::QueryEventsRequest {
                        start_time: Some(start),
                        page_size: 1000,
                        page_token: token,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for e in page.records.iter().filter_map(|r| r.event.as_ref()) {
                    if !e.secret_name.is_empty() {
                        rows.entry(e.secret_name.clone()).or_default().add(e);
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            print_report(&rows, if as_json { "json" } else { &format })?;
        }
        AuditCommand::Tail { after } => {
            let mut s = c
                .tail_events(pb::TailEventsRequest {
                    after_sequence: after,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            while let Some(r) = s.message().await.map_err(status_err)? {
                println!("{}", if as_json { record_json(&r) } else { line(&r) });
            }
        }
        AuditCommand::Export { from, to } => {
            let mut s = c
                .export_events(pb::ExportEventsRequest {
                    from_sequence: from,
                    to_sequence: to,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            while let Some(item) = s.message().await.map_err(status_err)? {
                println!("{}", sentia_audit::export::to_line(&item));
            }
        }
        AuditCommand::Verify { from, to, .. } => {
            let v = c
                .verify_chain(pb::VerifyChainRequest {
                    from_sequence: from,
                    to_sequence: to,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            report(
                as_json,
                v.valid,
                v.records_checked,
                v.checkpoints_checked,
                v.first_bad_sequence,
                &v.problem,
            )?;
        }
    }
    Ok(())
}

fn report(
    as_json: bool,
    valid: bool,
    records: u64,
    checkpoints: u64,
    first_bad: u64,
    problem: &str,
) -> anyhow::Result<()> {
    if as_json {
        println!(
            "{}",
            json!({"valid": valid, "records_checked": records, "checkpoints_checked": checkpoints, "first_bad_sequence": first_bad, "problem": problem})
        );
    } else if valid {
        println!("valid: {records} records, {checkpoints} checkpoints");
    } else {
        println!(
            "INVALID at sequence {first_bad}: {problem} ({records} records checked before it)"
        );
    }
    if valid {
        Ok(())
    } else {
        anyhow::bail!("the audit log does not verify")
    }
}

async fn verify_file(
    common: &Common,
    file: &str,
    key_addr: &str,
    key_token: Option<&str>,
    key_name: &str,
) -> anyhow::Result<()> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {file}"))?,
    );
    let mut items = Vec::new();
    for (n, l) in reader.lines().enumerate() {
        let l = l?;
        if l.trim().is_empty() {
            continue;
        }
        items.push(
            sentia_audit::export::from_line(&l)
                .map_err(|e| anyhow::anyhow!("{file}:{}: {e}", n + 1))?,
        );
    }
    let keys = public_keys(common, key_addr, key_token, key_name).await?;
    let v = sentia_audit::verify_export(&items, &keys);
    let (bad, why) = v.problem.clone().unwrap_or((0, String::new()));
    report(
        common.json,
        v.valid(),
        v.records_checked,
        v.checkpoints_checked,
        bad,
        &why,
    )
}

async fn public_keys(
    common: &Common,
    addr: &str,
    token: Option<&str>,
    name: &str,
) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let key_common = Common {
        token: token.map(str::to_string).or(common.token.clone()),
        ..common.clone()
    };
    let mut k = KeyServiceClient::new(key_common.channel(addr, "key-service").await?);
    let r = k
        .get_public_keys(GetPublicKeysRequest {
            key_name: name.to_string(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(r.keys.into_iter().map(|k| (k.kid, k.public_key)).collect())
}

/// One secret's line of the compliance report.
#[derive(Default)]
struct ReportRow {
    reads: u64,
    readers: std::collections::BTreeSet<String>,
    changes: u64,
    changers: std::collections::BTreeSet<String>,
    denied: u64,
    denied_principals: std::collections::BTreeSet<String>,
    failed_decryptions: u64,
    rotations: u64,
}

impl ReportRow {
    fn add(&mut self, e: &pb::AuditEvent) {
        let denied = matches!(
            e.status_code.as_str(),
            "PERMISSION_DENIED" | "UNAUTHENTICATED"
        );
        match (e.event_type.as_str(), e.success) {
            ("failed_decryption", _) => self.failed_decryptions += 1,
            (_, false) if denied => {
                self.denied += 1;
                self.denied_principals.insert(e.principal.clone());
            }
            ("rotation", true) => self.rotations += 1,
            ("secret_access", true) => {
                self.reads += 1;
                self.readers.insert(e.principal.clone());
            }
            ("secret_write" | "secret_delete" | "admin", true) => {
                self.changes += 1;
                self.changers.insert(e.principal.clone());
            }
            _ => {}
        }
    }
}

fn print_report(
    rows: &std::collections::BTreeMap<String, ReportRow>,
    format: &str,
) -> anyhow::Result<()> {
    let join =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
    match format {
        "json" => {
            let v: Vec<_> = rows
                .iter()
                .map(|(name, r)| {
                    json!({"secret": name, "reads": r.reads, "readers": r.readers, "changes": r.changes,
                        "changed_by": r.changers, "denied": r.denied, "denied_principals": r.denied_principals,
                        "failed_decryptions": r.failed_decryptions, "rotations": r.rotations})
                })
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
        "csv" => {
            println!(
                "secret,reads,readers,changes,changed_by,denied,denied_principals,failed_decryptions,rotations"
            );
            let q = |s: String| format!("\"{}\"", s.replace('"', "\"\""));
            for (name, r) in rows {
                println!(
                    "{},{},{},{},{},{},{},{},{}",
                    q(name.clone()),
                    r.reads,
                    q(join(&r.readers)),
                    r.changes,
                    q(join(&r.changers)),
                    r.denied,
                    q(join(&r.denied_principals)),
                    r.failed_decryptions,
                    r.rotations
                );
            }
        }
        "table" => {
            println!(
                "{:<36} {:>6} {:>8} {:>7} {:>6} {:>9}  READERS / DENIED",
                "SECRET", "READS", "CHANGES", "DENIED", "FAILED", "ROTATIONS"
            );
            for (name, r) in rows {
                println!(
                    "{:<36} {:>6} {:>8} {:>7} {:>6} {:>9}  {} / {}",
                    name,
                    r.reads,
                    r.changes,
                    r.denied,
                    r.failed_decryptions,
                    r.rotations,
                    join(&r.readers),
                    join(&r.denied_principals)
                );
            }
        }
        other => anyhow::bail!("--format {other:?}: use table, json or csv"),
    }
    Ok(())
}
