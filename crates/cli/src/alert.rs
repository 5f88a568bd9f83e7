//! `sentia alert list|ack`: the alerts audit-service's rules raised and stored, for an operator
//! on call — newest first, open ones unless asked for all, acknowledged by id (the
//! acknowledgement names who made it).

use clap::{Args, Subcommand};
use sentia_proto::audit::v1 as pb;
use serde_json::json;

use crate::conn::{AuditConn, status_err, utc};

/// `sentia alert …`.
#[derive(Args)]
pub struct AlertArgs {
    #[command(flatten)]
    conn: AuditConn,
    #[command(subcommand)]
    command: AlertCommand,
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Stored alerts, newest first: open ones, or all with --all.
    List {
        /// Include acknowledged alerts.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Acknowledge an alert by id.
    Ack {
        /// The alert's id (from `sentia alert list`).
        id: String,
    },
}

fn severity(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Warning) => "warning",
        Ok(pb::Severity::Info) => "info",
        _ => "unspecified",
    }
}

fn alert_json(a: &pb::Alert) -> serde_json::Value {
    json!({
        "id": a.id,
        "rule": a.rule,
        "severity": severity(a.severity),
        "summary": a.summary,
        "principal": a.principal,
        "secret": a.secret_name,
        "time": utc(&a.time),
        "sequences": a.sequences,
        "acknowledged": a.acknowledged,
        "acknowledged_by": a.acknowledged_by,
    })
}

fn alert_line(a: &pb::Alert) -> String {
    let ack = if a.acknowledged {
        format!("  (acknowledged by {})", a.acknowledged_by)
    } else {
        String::new()
    };
    format!(
        "{}  {}  {:<8}  {:<28}  {}{ack}",
        a.id,
        utc(&a.time),
        severity(a.severity),
        a.rule,
        a.summary
    )
}

/// Runs `sentia alert`.
pub async fn run(args: AlertArgs) -> anyhow::Result<()> {
    let mut c = args.conn.client().await?;
    let as_json = args.conn.common.json;
    match args.command {
        AlertCommand::List { all, limit } => {
            let mut alerts = Vec::new();
            let mut page_token = String::new();
            while alerts.len() < limit {
                let r = c
                    .list_alerts(pb::ListAlertsRequest {
                        include_acknowledged: all,
                        page_size: i32::try_from(limit.min(1000)).unwrap_or(1000),
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                alerts.extend(r.alerts);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            alerts.truncate(limit);
            if as_json {
                let out: Vec<_> = alerts.iter().map(alert_json).collect();
                println!("{}", serde_json::Value::Array(out));
            } else if alerts.is_empty() {
                println!("no {}alerts", if all { "" } else { "open " });
            } else {
                for a in &alerts {
                    println!("{}", alert_line(a));
                }
            }
        }
        AlertCommand::Ack { id } => {
            let a = c
                .acknowledge_alert(pb::AcknowledgeAlertRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            if as_json {
                println!("{}", alert_json(&a));
            } else {
                println!("{}", alert_line(&a));
            }
        }
    }
    Ok(())
}
