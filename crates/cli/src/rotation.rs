//! `sentia rotation ...`: policies, status, on-demand rotation and history, from
//! rotation-scheduler.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use sentia_proto::json::{json_to_struct, struct_to_json};
use sentia_proto::rotation::v1::{self as pb, rotation_service_client::RotationServiceClient};
use sentia_runtime::client::AuthedChannel;
use serde_json::{Value, json};

use crate::conn::{Common, status_err, utc};

/// Connection options and the rotation subcommand.
#[derive(Args)]
pub struct RotationArgs {
    /// rotation-scheduler address (host:port or URI).
    #[arg(
        long,
        env = "SENTIA_ROTATION_ADDR",
        default_value = "127.0.0.1:8203",
        global = true
    )]
    addr: String,
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: RotationCommand,
}

#[derive(Subcommand)]
enum RotationCommand {
    /// Create or replace the policy for a path or glob ("prod/db/**").
    Set {
        /// Secret path or glob.
        pattern: String,
        /// How the rotation is carried out.
        #[arg(long, value_enum, default_value = "automated")]
        method: MethodArg,
        /// Time between rotations (e.g. 90d, 12h).
        #[arg(long, value_parser = duration)]
        every: Duration,
        /// Reminder lead time before the due date.
        #[arg(long, value_parser = duration, default_value = "7d")]
        notify: Duration,
        /// How long the previous value keeps working after a rotation.
        #[arg(long, value_parser = duration, default_value = "1d")]
        grace: Duration,
        /// random, api_key, postgres_password, redis_acl, webhook or jwt_signing_key (none
        /// for manual).
        #[arg(long, default_value = "")]
        rotator: String,
        /// Rotator parameter `key=value`; the value is read as JSON when it parses
        /// (`roles=["a","b"]`, `length=48`), else as a string. Repeatable.
        #[arg(long = "param", value_parser = param)]
        params: Vec<(String, Value)>,
        /// Failures before a rotation is parked.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Lead time of the notice before a covered secret's expiry.
        #[arg(long, value_parser = duration, default_value = "7d")]
        expiry_notify: Duration,
    },
    /// Show the policy that applies to a secret.
    Policy {
        /// Secret path.
        path: String,
    },
    /// Rotation status of every secret: the rule that chose its policy, next due time,
    /// whether its notice went out, overdue, last result.
    Status {
        /// Only paths under this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only overdue secrets.
        #[arg(long)]
        overdue: bool,
    },
    /// Rotate a secret now.
    RotateNow {
        /// Secret path.
        path: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Shorten the grace period: the old value stops working sooner.
        #[arg(long)]
        emergency: bool,
    },
    /// Past and running rotations of a secret, newest first.
    History {
        /// Secret path.
        path: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    Automated,
    Rolling,
    Manual,
}

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    sentia_runtime::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 90d, 12h, 30m"))
}

fn param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), v))
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn method_name(m: i32) -> &'static str {
    match pb::RotationMethod::try_from(m) {
        Ok(pb::RotationMethod::Automated) => "automated",
        Ok(pb::RotationMethod::Rolling) => "rolling",
        Ok(pb::RotationMethod::Manual) => "manual",
        _ => "unspecified",
    }
}

fn step_name(s: i32) -> &'static str {
    match pb::RotationStep::try_from(s) {
        Ok(pb::RotationStep::CreatePending) => "create_pending",
        Ok(pb::RotationStep::Set) => "set",
        Ok(pb::RotationStep::Test) => "test",
        Ok(pb::RotationStep::Finish) => "finish",
        Ok(pb::RotationStep::Cleanup) => "cleanup",
        Ok(pb::RotationStep::Completed) => "completed",
        Ok(pb::RotationStep::RolledBack) => "rolled_back",
        Ok(pb::RotationStep::Parked) => "parked",
        _ => "unspecified",
    }
}

fn days(d: &Option<prost_types::Duration>) -> String {
    let s = d.as_ref().map(|d| d.seconds).unwrap_or(0);
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else {
        format!("{s}s")
    }
}

fn policy_json(p: &pb::RotationPolicy) -> Value {
    let params = p
        .rotator_params
        .clone()
        .map(struct_to_json)
        .unwrap_or_default();
    json!({
        "path_pattern": p.path_pattern,
        "method": method_name(p.method),
        "frequency_seconds": p.frequency.as_ref().map(|d| d.seconds),
        "notify_before_seconds": p.notify_before.as_ref().map(|d| d.seconds),
        "grace_period_seconds": p.grace_period.as_ref().map(|d| d.seconds),
        "rotator": p.rotator,
        "rotator_params": params,
        "max_attempts": p.max_attempts,
        "expiry_notify_before_seconds": p.expiry_notify_before.as_ref().map(|d| d.seconds),
        "source": source_name(p),
    })
}

/// Which rule chose a policy: `exact`, `glob`, `class:api_key`, `tier:critical`.
fn source_name(p: &pb::RotationPolicy) -> String {
    match pb::PolicySource::try_from(p.source) {
        Ok(pb::PolicySource::Exact) => "exact".into(),
        Ok(pb::PolicySource::Glob) => format!("glob:{}", p.path_pattern),
        Ok(pb::PolicySource::ClassDefault) => format!("class:{}", p.source_default),
        Ok(pb::PolicySource::TierDefault) => format!("tier:{}", p.source_default),
        _ => "stored".into(),
    }
}

fn print_policy(p: &pb::RotationPolicy, as_json: bool) {
    if as_json {
        println!("{}", policy_json(p));
        return;
    }
    let params = policy_json(p)["rotator_params"].to_string();
    println!(
        "{} ({})  {} every {}, notify {} before, grace {}, rotator {} {params}, max attempts {}",
        p.path_pattern,
        source_name(p),
        method_name(p.method),
        days(&p.frequency),
        days(&p.notify_before),
        days(&p.grace_period),
        if p.rotator.is_empty() {
            "none"
        } else {
            &p.rotator
        },
        p.max_attempts
    );
}

fn rotation_json(r: &pb::Rotation) -> Value {
    json!({
        "id": r.id,
        "path": r.path,
        "step": step_name(r.step),
        "attempts": r.attempts,
        "pending_version": r.pending_version,
        "last_error": r.last_error,
        "start_time": utc(&r.start_time),
        "update_time": utc(&r.update_time),
        "reason": r.reason,
        "emergency": r.emergency,
    })
}

fn print_rotation(r: &pb::Rotation) {
    println!(
        "{}  {}  {}  step={} attempts={} version={} reason={:?}{}{}",
        utc(&r.start_time),
        r.id,
        r.path,
        step_name(r.step),
        r.attempts,
        r.pending_version,
        r.reason,
        if r.emergency { " EMERGENCY" } else { "" },
        if r.last_error.is_empty() {
            String::new()
        } else {
            format!(" error={:?}", r.last_error)
        }
    );
}

/// Runs a `sentia rotation` subcommand.
pub async fn run(args: RotationArgs) -> anyhow::Result<()> {
    let channel: AuthedChannel = args
        .common
        .channel(&args.addr, "rotation-scheduler")
        .await?;
    let mut client = RotationServiceClient::new(channel);
    let as_json = args.common.json;
    match args.command {
        RotationCommand::Set {
            pattern,
            method,
            every,
            notify,
            grace,
            rotator,
            params,
            max_attempts,
            expiry_notify,
        } => {
            let method = match method {
                MethodArg::Automated => pb::RotationMethod::Automated,
                MethodArg::Rolling => pb::RotationMethod::Rolling,
                MethodArg::Manual => pb::RotationMethod::Manual,
            };
            let p = client
                .set_policy(pb::SetPolicyRequest {
                    policy: Some(pb::RotationPolicy {
                        path_pattern: pattern,
                        frequency: Some(proto_duration(every)),
                        method: method as i32,
                        notify_before: Some(proto_duration(notify)),
                        grace_period: Some(proto_duration(grace)),
                        rotator,
                        rotator_params: Some(json_to_struct(&params.into_iter().collect())),
                        max_attempts,
                        expiry_notify_before: Some(proto_duration(expiry_notify)),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_policy(&p, as_json);
        }
        RotationCommand::Policy { path } => {
            let p = client
                .get_policy(pb::GetPolicyRequest { path })
                .await
                .map_err(status_err)?
                .into_inner();
            print_policy(&p, as_json);
        }
        RotationCommand::Status { prefix, overdue } => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let r = client
                    .list_rotations(pb::ListRotationsRequest {
                        prefix: prefix.clone(),
                        overdue_only: overdue,
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                all.extend(r.rotations);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            if as_json {
                let rows: Vec<Value> = all
                    .iter()
                    .map(|s| {
                        json!({
                            "path": s.path,
                            "policy": s.policy_pattern,
                            "rule": s.policy.as_ref().map(source_name),
                            "method": method_name(s.method),
                            "last_rotation_time": utc(&s.last_rotation_time),
                            "next_due_time": utc(&s.next_due_time),
                            "notice_time": utc(&s.notice_time),
                            "notice_sent_time": s.notice_sent_time.as_ref().map(|_| utc(&s.notice_sent_time)),
                            "expire_time": s.expire_time.as_ref().map(|_| utc(&s.expire_time)),
                            "overdue": s.overdue,
                            "last_rotation": s.last_rotation.as_ref().map(rotation_json),
                        })
                    })
                    .collect();
                println!("{}", Value::Array(rows));
            } else {
                println!(
                    "PATH\tRULE\tMETHOD\tLAST\tNEXT DUE\tNOTICE\tEXPIRES\tOVERDUE\tLAST RESULT"
                );
                for s in &all {
                    let notice = match &s.notice_sent_time {
                        Some(_) => format!("sent {}", utc(&s.notice_sent_time)),
                        None => format!("from {}", utc(&s.notice_time)),
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        s.path,
                        s.policy.as_ref().map(source_name).unwrap_or_default(),
                        method_name(s.method),
                        utc(&s.last_rotation_time),
                        utc(&s.next_due_time),
                        notice,
                        if s.expire_time.is_some() {
                            utc(&s.expire_time)
                        } else {
                            "-".into()
                        },
                        if s.overdue { "OVERDUE" } else { "-" },
                        s.last_rotation
                            .as_ref()
                            .map(|r| step_name(r.step))
                            .unwrap_or("-")
                    );
                }
            }
        }
        RotationCommand::RotateNow {
            path,
            reason,
            emergency,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason is required: it is recorded in the audit log");
            }
            let r = client
                .rotate_now(pb::RotateNowRequest {
                    path,
                    reason,
                    emergency,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if as_json {
                println!("{}", rotation_json(&r));
            } else {
                print_rotation(&r);
            }
        }
        RotationCommand::History { path } => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let r = client
                    .get_rotation_history(pb::GetRotationHistoryRequest {
                        path: path.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .map_err(status_err)
                    .context("reading rotation history")?
                    .into_inner();
                all.extend(r.rotations);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            if as_json {
                println!("{}", Value::Array(all.iter().map(rotation_json).collect()));
            } else {
                for r in &all {
                    print_rotation(r);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn params_read_json_values_and_fall_back_to_strings() {
        assert_eq!(param("length=48").unwrap(), ("length".into(), json!(48)));
        assert_eq!(
            param("roles=[\"a\",\"b\"]").unwrap(),
            ("roles".into(), json!(["a", "b"]))
        );
        assert_eq!(
            param("admin_secret=prod/admin/pg").unwrap(),
            ("admin_secret".into(), json!("prod/admin/pg"))
        );
        assert!(param("novalue").is_err());
    }
}
