//! audit-service suite: hash-chained AppendEvents (batches of 100, and single events) as
//! events per second against plain single-row INSERTs on the same database with the same
//! concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sentia_proto::audit::v1 as pb;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_runtime::client::{CallContext, connect};
use sentia_runtime::{MapSource, Shutdown};

use crate::Args;
use crate::harness::{Figures, drive, header, row};
use crate::keys::{AUDIT_TOKEN, KeyServiceUnderTest, SERVICE_TOKEN};

fn event(emitter: &str, sequence: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        event_type: "secret_access".into(),
        principal: "app:bench".into(),
        secret_name: "bench/app/hot".into(),
        operation: "read".into(),
        source_ip: "127.0.0.1".into(),
        success: true,
        service: "vault-service".into(),
        status_code: "OK".into(),
        request_id: "01a2-bench".into(),
        emitter_id: emitter.into(),
        emitter_sequence: sequence,
        ..Default::default()
    }
}

/// audit-service in this process, accepting the bench's service token.
pub struct AuditUnderTest {
    /// Listening address.
    pub addr: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<Result<(), audit_service::AuditError>>,
}

impl AuditUnderTest {
    /// Starts it on a fresh database named `name`.
    pub async fn start(
        args: &Args,
        key_addr: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let db = crate::vault::database(args, dir, name).await?;
        let tokens = sentia_runtime::auth::TokenTable::from_plain([(
            "vault-service",
            sentia_runtime::Role::Service,
            SERVICE_TOKEN,
        )])
        .to_config();
        let config = audit_service::Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", db.as_str()),
            ("SENTIA_KEY_SERVICE_ADDR", key_addr),
            ("SENTIA_KEY_SERVICE_TOKEN", AUDIT_TOKEN),
            ("SENTIA_AUTH_TOKENS", tokens.as_str()),
        ]))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(audit_service::run(config, listener, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self {
            addr,
            shutdown,
            server,
        })
    }

    /// Stops it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.server.await??;
        Ok(())
    }
}

/// Runs the audit-service rows.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let ks = KeyServiceUnderTest::start().await?;
    let dir = std::env::temp_dir().join(format!("sentia_bench_audit_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let audit = AuditUnderTest::start(args, &ks.addr, &dir, "audit").await?;
    let addr = audit.addr.clone();
    let backend = if args.postgres.is_some() {
        "Postgres"
    } else {
        "SQLite"
    };
    let (n, m, s) = (args.connections, args.concurrency, args.seconds);
    let mut clients = Vec::new();
    for _ in 0..n {
        let ch = connect(&addr, None).await?;
        clients.push(AuditServiceClient::new(
            CallContext::with_token(Some(SERVICE_TOKEN))?.wrap(ch),
        ));
    }
    println!(
        "audit-service benchmark on {backend}: {n} connections x {m} in flight, {s} s per row; \
         figures are events (or rows) per second\n"
    );
    header();
    let next = Arc::new(AtomicU64::new(0));
    let mut rows = Vec::new();
    for batch in [100u64, 1] {
        let (cl, seq) = (clients.clone(), next.clone());
        let f = drive(n, m, s, move |i| {
            let mut c = cl[i].clone();
            let first = seq.fetch_add(batch, Ordering::Relaxed) + 1;
            async move {
                let events = (first..first + batch).map(|k| event("bench", k)).collect();
                c.append_events(pb::AppendEventsRequest { events })
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        rows.push((
            batch,
            Figures {
                rps: f.rps * batch as f64,
                ..f
            },
        ));
    }

    let inserts = crate::vault::plain_inserts(args, &dir, "audit_plain", 160).await?;
    row(
        &format!("plain INSERT on {backend} (baseline)"),
        &inserts,
        &inserts,
    );
    for (batch, f) in &rows {
        row(&format!("AppendEvents, {batch} per call"), f, &inserts);
    }
    println!();
    alert_rows().await;
    audit.stop().await?;
    ks.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Alert evaluation of one principal's reads, in process: events per second with about 600
/// reads inside the 60 s window (baseline) and with 60,000 (one read per ms, 10^3 reads/s,
/// over two windows' worth of events). O(1) amortised per event shows as a ratio near 1.
async fn alert_rows() {
    use audit_service::alerts::{Engine, Rate, Rules, Windows};
    let run = |step_ms: i64, events: i64| async move {
        let engine = Engine::new(
            Rules {
                failed_access: Rate::parse("5/5m").unwrap_or_else(|| unreachable!()),
                // Never fires: the row measures counting, not alert delivery.
                high_frequency: Rate::parse("1000000000/1m").unwrap_or_else(|| unreachable!()),
                sources: Default::default(),
                drill_overdue_after: None,
            },
            Windows::memory(),
        );
        let mut e = event("alerts", 0);
        let started = std::time::Instant::now();
        for i in 0..events {
            let ms = 1_790_000_000_000 + i * step_ms;
            e.time = Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            });
            e.emitter_sequence = i as u64;
            engine.evaluate(i as u64, &e).await;
        }
        Figures {
            rps: events as f64 / started.elapsed().as_secs_f64(),
            p50_us: 0,
            p99_us: 0,
        }
    };
    let sparse = run(100, 120_000).await;
    let dense = run(1, 120_000).await;
    row("alert rules, ~600 reads in window", &sparse, &sparse);
    row("alert rules, 60,000 reads in window", &dense, &sparse);
}
