//! Alert rules from the strategy document, evaluated on every appended event in log order:
//! too many failed accesses by one principal in a window (UnauthorizedSecretAccess), too many
//! reads by one principal (HighFrequencySecretRequests), access from outside a principal's
//! allowed networks (UnexpectedSource), any failed decryption (FailedDecryption), and denied
//! administrative operations (PrivilegeEscalationAttempt), reads of expired secrets
//! (ExpiredSecretRead); and rotation-scheduler's reminders, notices and outcomes (RotationDue,
//! RotationOverdue, RotationScheduled, RotationFailed, RotationParked, RotationCompleted), its
//! expiry notices (UpcomingSecretExpiration, SecretExpired), its scheduled backups' failures (BackupFailed, BackupCheckFailed, BackupPruneFailed), and
//! failed restore drills (BackupDrillFailed). An appended event reaches the rules with the
//! appending identity as its `service`, so those reports count only from their maker. Sliding
//! windows live in Redis when it is configured (replicas share counts), in process otherwise;
//! time is the event's time.
//! Raised alerts are stored (ListAlerts / AcknowledgeAlert) and logged.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use sentia_proto::audit::v1::{Alert, AuditEvent, Severity};
use sentia_runtime::{Reader, Shutdown};
use tokio::sync::mpsc;

use crate::store::Store;

/// "More than `threshold` events in `window`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed in the window; one more fires.
    pub threshold: u64,
    /// Window length.
    pub window: Duration,
}

impl Rate {
    /// Parses `N/DURATION`, e.g. `5/5m`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (n, d) = raw.split_once('/')?;
        Some(Self {
            threshold: n.trim().parse().ok()?,
            window: sentia_runtime::config::parse_duration(d.trim())?,
        })
    }
}

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address.
    pub fn parse(raw: &str) -> Option<Self> {
        let (addr, bits) = match raw.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = raw.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { net: addr, bits })
    }

    /// True if `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, width): (u128, u128, u32) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n).into(), u32::from(i).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        if self.bits == 0 {
            return true;
        }
        let shift = width - u32::from(self.bits);
        (a >> shift) == (b >> shift)
    }
}

/// The rules and their settings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `SENTIA_ALERT_FAILED_ACCESS` (default `5/5m`): failed accesses by one principal.
    pub failed_access: Rate,
    /// `SENTIA_ALERT_HIGH_FREQUENCY` (default `1000/1m`): reads by one principal.
    pub high_frequency: Rate,
    /// `SENTIA_ALERT_SOURCES`: `principal=cidr|cidr;...` — where each listed principal may
    /// call from. Principals not listed are not checked.
    pub sources: HashMap<String, Vec<Cidr>>,
    /// `SENTIA_DRILL_OVERDUE_AFTER` (unset: off; the shipped deployments that run the drill
    /// job set 35d): BackupDrillOverdue when no restore drill has reported for this long, so
    /// a drill job that was never scheduled, or stopped running, is noticed.
    pub drill_overdue_after: Option<Duration>,
}

impl Rules {
    /// Reads the rule settings; problems name their variable.
    pub fn from_source(r: &mut Reader<'_>) -> Self {
        let mut rate = |name: &str, default: &str| {
            let raw = r.string_or(name, default);
            Rate::parse(&raw).unwrap_or_else(|| {
                r.problem(format!(
                    "{name}={raw:?} must look like 5/5m (events/window)"
                ));
                Rate::parse(default).unwrap_or(Rate {
                    threshold: 5,
                    window: Duration::from_secs(300),
                })
            })
        };
        let failed_access = rate("SENTIA_ALERT_FAILED_ACCESS", "5/5m");
        let high_frequency = rate("SENTIA_ALERT_HIGH_FREQUENCY", "1000/1m");
        let mut sources = HashMap::new();
        if let Some(raw) = r.optional("SENTIA_ALERT_SOURCES") {
            for item in raw.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let parsed = item.split_once('=').and_then(|(p, nets)| {
                    let nets: Option<Vec<Cidr>> =
                        nets.split('|').map(|n| Cidr::parse(n.trim())).collect();
                    Some((p.trim().to_string(), nets?))
                });
                match parsed {
                    Some((p, nets)) if !p.is_empty() => {
                        sources.insert(p, nets);
                    }
                    _ => r.problem(format!(
                        "SENTIA_ALERT_SOURCES: {item:?} is not principal=cidr|cidr"
                    )),
                }
            }
        }
        let drill_overdue_after = r.optional("SENTIA_DRILL_OVERDUE_AFTER").and_then(|raw| {
            let after = sentia_runtime::config::parse_duration(&raw).filter(|d| !d.is_zero());
            if after.is_none() {
                r.problem(format!(
                    "SENTIA_DRILL_OVERDUE_AFTER={raw:?} must be a positive duration such as 35d"
                ));
            }
            after
        });
        Self {
            failed_access,
            high_frequency,
            sources,
            drill_overdue_after,
        }
    }
}

/// The identity the restore drill job reports as (its outcome events are appended by it).
pub const DRILL_IDENTITY: &str = "backup-drill";

/// Since when a drill is owed, if it is overdue at `now_ms`: the newest drill report, or —
/// none ever made — the oldest record of the log (how long this deployment has been
/// keeping one); `None` when it is not overdue or the log is empty.
fn drill_overdue_since(
    now_ms: i64,
    last_drill_ms: Option<i64>,
    oldest_record_ms: Option<i64>,
    after: Duration,
) -> Option<i64> {
    let since = last_drill_ms.or(oldest_record_ms)?;
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    (now_ms.saturating_sub(since) > after_ms).then_some(since)
}

/// Raises BackupDrillOverdue when no restore drill has reported within `after` — once: not
/// again while that alert is open (unacknowledged). Looks every tenth of `after`, at most
/// hourly.
pub async fn watch_drills(
    store: Store,
    webhook: Option<crate::webhook::Webhook>,
    after: Duration,
    shutdown: Shutdown,
) {
    let every = (after / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let now = sentia_proto::wkt::now_ms();
        let looked = async {
            let last = store.last_report_of(DRILL_IDENTITY, "backup").await?;
            let oldest = store.oldest_record_time().await?;
            let open = store.open_alerts_of("BackupDrillOverdue").await?;
            Ok::<_, crate::error::AuditError>((last, oldest, open))
        };
        let (last, oldest, open) = match looked.await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up the last restore drill; retrying");
                continue;
            }
        };
        let Some(since) = drill_overdue_since(now, last, oldest, after) else {
            continue;
        };
        if open > 0 {
            continue;
        }
        let summary = format!(
            "no restore drill has reported since {} ({}, more than SENTIA_DRILL_OVERDUE_AFTER): \
             backups are not being proven restorable; check that the drill job is scheduled \
             and can reach audit-service",
            sentia_proto::wkt::utc(since.div_euclid(1000)),
            if last.is_some() {
                "its last report"
            } else {
                "none ever; the oldest record of the log"
            }
        );
        let alert = Alert {
            principal: DRILL_IDENTITY.into(),
            ..new_alert("BackupDrillOverdue", Severity::Critical, summary)
        };
        raise(&store, webhook.as_ref(), alert).await;
    }
}

/// One key's event times, oldest first, and the window they are counted over.
#[derive(Debug, Default)]
struct Window {
    times: VecDeque<i64>,
    span: i64,
}

/// In-process windows. Each hit costs O(1) amortised whatever the rate: times are kept in
/// order (an out-of-order event is inserted by binary search, near the back), and expire
/// from the front; keys that went quiet are swept every [`SWEEP_EVERY`] hits, so memory
/// follows the principals active within their window.
#[derive(Debug, Default)]
pub struct MemoryWindows {
    keys: HashMap<String, Window>,
    hits: u64,
    latest: i64,
}

/// Hits between sweeps of quiet keys.
const SWEEP_EVERY: u64 = 4096;

impl MemoryWindows {
    fn hit(&mut self, key: &str, at_ms: i64, span: i64) -> u64 {
        self.hits += 1;
        self.latest = self.latest.max(at_ms);
        if self.hits.is_multiple_of(SWEEP_EVERY) {
            let latest = self.latest;
            self.keys
                .retain(|_, w| w.times.back().is_some_and(|t| latest - *t < w.span));
        }
        let w = match self.keys.get_mut(key) {
            Some(w) => w,
            None => self.keys.entry(key.to_string()).or_default(),
        };
        w.span = span;
        let at = w.times.partition_point(|t| *t <= at_ms);
        w.times.insert(at, at_ms);
        let newest = w.times.back().copied().unwrap_or(at_ms);
        while w.times.front().is_some_and(|t| newest - *t >= span) {
            w.times.pop_front();
        }
        // Events in (at_ms - span, at_ms]: the whole deque when events come in order.
        let from = w.times.partition_point(|t| *t <= at_ms - span);
        let to = w.times.partition_point(|t| *t <= at_ms);
        to.saturating_sub(from) as u64
    }

    fn first_in(&mut self, key: &str, at_ms: i64, span: i64) -> bool {
        let w = self.keys.entry(format!("fired:{key}")).or_default();
        w.span = span;
        match w.times.back() {
            Some(last) if at_ms - *last < span => false,
            _ => {
                w.times.clear();
                w.times.push_back(at_ms);
                true
            }
        }
    }
}

impl Windows {
    /// Windows in this process (one replica).
    pub fn memory() -> Self {
        Self::Memory(Mutex::new(MemoryWindows::default()))
    }
}

/// Sliding-window counters: in process, or in Redis sorted sets shared by replicas.
pub enum Windows {
    /// Per-key event times (and, under `fired:` keys, the time a rule last fired).
    Memory(Mutex<MemoryWindows>),
    /// Redis, keys under a prefix.
    Redis {
        /// Connection.
        conn: redis::aio::ConnectionManager,
        /// Key prefix.
        prefix: String,
    },
}

/// Adds a member at score ARGV[1], drops members older than the window (ARGV[2] ms), returns
/// the count, and expires the key with the window.
const HIT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])";

impl Windows {
    /// Records an event at `at_ms` under `key` and returns how many fall in the window
    /// ending at it (an event exactly `window` old is out).
    pub async fn hit(&self, key: &str, at_ms: i64, window: Duration, member: u64) -> u64 {
        let w = window.as_millis() as i64;
        match self {
            Self::Memory(m) => m.lock().map_or(0, |mut m| m.hit(key, at_ms, w)),
            Self::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let r = redis::Script::new(HIT)
                    .key(format!("{prefix}alerts:{key}"))
                    .arg(at_ms)
                    .arg(w)
                    .arg(member)
                    .invoke_async::<u64>(&mut c)
                    .await;
                r.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "redis alert window unavailable; counting this event alone");
                    1
                })
            }
        }
    }
}

impl Windows {
    /// True if `key` has not fired within `window` before `at_ms`, and marks it fired: a
    /// rule fires once per window per principal, not on every event past the threshold.
    pub async fn first_in(&self, key: &str, at_ms: i64, window: Duration) -> bool {
        let w = window.as_millis() as i64;
        match self {
            Self::Memory(m) => m.lock().map_or(true, |mut m| m.first_in(key, at_ms, w)),
            Self::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let r = redis::cmd("SET")
                    .arg(format!("{prefix}alerts:fired:{key}"))
                    .arg(at_ms)
                    .arg("NX")
                    .arg("PX")
                    .arg(w.max(1))
                    .query_async::<Option<String>>(&mut c)
                    .await;
                // Redis down: fire (a duplicate alert beats a missed one).
                r.map(|v| v.is_some()).unwrap_or(true)
            }
        }
    }
}

/// The notice a rotation-scheduler event carries to the alert sinks: reminders for manual
/// secrets, notices before automatic rotations, expiry notices, and every rotation's outcome.
fn rotation_notice(e: &AuditEvent) -> Option<(&'static str, Severity, String)> {
    let path = &e.secret_name;
    Some(match e.operation.as_str() {
        "rotation_notice" => (
            "RotationScheduled",
            Severity::Info,
            format!(
                "{path} rotates automatically when it falls due (sentia rotation status shows \
                 when); its consumers must pick up the new value"
            ),
        ),
        "secret_expiring" => (
            "UpcomingSecretExpiration",
            Severity::Warning,
            format!(
                "{path} expires soon; extend it (sentia secret update {path} --expires ...) or \
                 replace it before reads are refused"
            ),
        ),
        "secret_expired" => (
            "SecretExpired",
            Severity::Critical,
            format!(
                "{path} has expired: reads are refused until its expiry is extended \
                 (sentia secret update {path} --expires ...)"
            ),
        ),
        "reminder_upcoming" => (
            "RotationDue",
            Severity::Warning,
            format!("{path} is due for rotation soon; rotate it by hand (manual policy)"),
        ),
        "reminder_overdue" => (
            "RotationOverdue",
            Severity::Critical,
            format!("{path} is past its rotation due date"),
        ),
        "rotation_completed" => (
            "RotationCompleted",
            Severity::Info,
            format!("{path} rotated; the previous value is destroyed"),
        ),
        "rotation_parked" => (
            "RotationParked",
            Severity::Critical,
            format!("rotation of {path} failed too often and stopped; it needs a person"),
        ),
        op if op.starts_with("rotation_") && op.ends_with("_failed") => (
            "RotationFailed",
            Severity::Warning,
            format!(
                "rotation of {path} failed at {}; it was rolled back and will be retried",
                op.trim_start_matches("rotation_")
                    .trim_end_matches("_failed")
            ),
        ),
        _ => return None,
    })
}

/// The notice a failed scheduled backup (from rotation-scheduler) or restore drill (from the
/// `backup-drill` job) carries to the alert sinks. The event's `secret_name` is the
/// destination for a copy or a prune, the archive for a drill, empty for a backup itself.
fn backup_notice(e: &AuditEvent) -> Option<(&'static str, Severity, String)> {
    let at = &e.secret_name;
    if e.service == DRILL_IDENTITY {
        return (e.operation == "backup_drill_failed").then(|| {
            (
                "BackupDrillFailed",
                Severity::Critical,
                format!(
                    "the restore drill of {at} failed ({}): that backup may not restore; the \
                     drill job's output says which step",
                    e.status_code
                ),
            )
        });
    }
    if e.service != "rotation-scheduler" {
        return None;
    }
    Some(match e.operation.as_str() {
        "backup_failed" => (
            "BackupFailed",
            Severity::Critical,
            format!(
                "the scheduled backup failed ({}): no archive was made; rotation-scheduler's log \
                 says why, and it tries again after SENTIA_BACKUP_RETRY",
                e.status_code
            ),
        ),
        "backup_copy_failed" => (
            "BackupFailed",
            Severity::Critical,
            format!("a scheduled backup could not be copied to {at}; the other copies were made"),
        ),
        "backup_check_failed" => (
            "BackupCheckFailed",
            Severity::Critical,
            format!(
                "a stored backup does not verify ({}): {}; make a new one and replace that copy",
                e.status_code,
                if at.is_empty() {
                    "the check could not run"
                } else {
                    at.as_str()
                }
            ),
        ),
        "backup_prune_failed" => (
            "BackupPruneFailed",
            Severity::Warning,
            format!("backups past retention could not be deleted from {at}"),
        ),
        _ => return None,
    })
}

/// Evaluates rules over events and raises alerts.
pub struct Engine {
    rules: Rules,
    windows: Windows,
}

fn is_denied(e: &AuditEvent) -> bool {
    !e.success
        && matches!(
            e.status_code.as_str(),
            "PERMISSION_DENIED" | "UNAUTHENTICATED"
        )
}

fn at_ms(e: &AuditEvent) -> i64 {
    e.time.as_ref().map_or(0, |t| {
        t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
    })
}

impl Engine {
    /// An engine over `rules`, counting in `windows`.
    pub fn new(rules: Rules, windows: Windows) -> Self {
        Self { rules, windows }
    }

    /// The alerts `event` (stored at `sequence`) raises.
    pub async fn evaluate(&self, sequence: u64, e: &AuditEvent) -> Vec<Alert> {
        // Calls refused before authentication have no principal: count them by address, so
        // a token brute force from one host is still one "who".
        let who = if e.principal.is_empty() {
            format!("ip:{}", e.source_ip)
        } else {
            e.principal.clone()
        };
        let mut out = Vec::new();
        let alert = |rule: &str, severity: Severity, summary: String| Alert {
            principal: who.clone(),
            secret_name: e.secret_name.clone(),
            sequences: vec![sequence],
            ..new_alert(rule, severity, summary)
        };
        let at = at_ms(e);
        if e.event_type == "failed_decryption" {
            out.push(alert(
                "FailedDecryption",
                Severity::Critical,
                format!(
                    "{} failed to decrypt {:?} ({})",
                    e.service, e.secret_name, e.operation
                ),
            ));
        }
        if is_denied(e) {
            let r = self.rules.failed_access;
            let key = format!("failed:{who}");
            let n = self.windows.hit(&key, at, r.window, sequence).await;
            if n > r.threshold && self.windows.first_in(&key, at, r.window).await {
                out.push(alert(
                    "UnauthorizedSecretAccess",
                    Severity::Critical,
                    format!("{who} was refused {n} times within {}s", r.window.as_secs()),
                ));
            }
            if e.event_type == "admin"
                || e.operation.starts_with("create_")
                || e.operation.contains("rotate")
            {
                out.push(alert(
                    "PrivilegeEscalationAttempt",
                    Severity::Critical,
                    format!(
                        "{who} was refused the administrative operation {}",
                        e.operation
                    ),
                ));
            }
        }
        if e.success && e.event_type == "secret_access" {
            let r = self.rules.high_frequency;
            let key = format!("reads:{who}");
            let n = self.windows.hit(&key, at, r.window, sequence).await;
            if n > r.threshold && self.windows.first_in(&key, at, r.window).await {
                out.push(alert(
                    "HighFrequencySecretRequests",
                    Severity::Warning,
                    format!(
                        "{who} read secrets {n} times within {}s",
                        r.window.as_secs()
                    ),
                ));
            }
        }
        if e.success && e.event_type == "secret_access" && e.operation == "read_expired" {
            out.push(alert(
                "ExpiredSecretRead",
                Severity::Warning,
                format!(
                    "{who} read {:?} after it expired (allow_expired)",
                    e.secret_name
                ),
            ));
        }
        if e.event_type == "rotation"
            && e.service == "rotation-scheduler"
            && let Some((rule, severity, summary)) = rotation_notice(e)
        {
            out.push(alert(rule, severity, summary));
        }
        if e.event_type == "backup"
            && let Some((rule, severity, summary)) = backup_notice(e)
        {
            out.push(alert(rule, severity, summary));
        }
        if let Some(nets) = self.rules.sources.get(&e.principal)
            && let Ok(ip) = e.source_ip.parse::<IpAddr>()
            && !nets.iter().any(|n| n.contains(ip))
        {
            out.push(alert(
                "UnexpectedSource",
                Severity::Critical,
                format!(
                    "{} called from {ip}, outside its allowed networks",
                    e.principal
                ),
            ));
        }
        out
    }
}

/// A new, unacknowledged alert of `rule` raised now, about no principal, secret or record
/// until the caller says which.
fn new_alert(rule: &str, severity: Severity, summary: String) -> Alert {
    Alert {
        id: uuid::Uuid::now_v7().to_string(),
        rule: rule.into(),
        severity: severity as i32,
        summary,
        time: Some(sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms())),
        ..Alert::default()
    }
}

/// Sends an alert to every sink: the log, the alerts table, and the webhook if configured.
pub async fn raise(store: &Store, webhook: Option<&crate::webhook::Webhook>, a: Alert) {
    tracing::warn!(rule = %a.rule, principal = %a.principal, secret = %a.secret_name, summary = %a.summary, "alert raised");
    if let Err(e) = store.add_alert(&a).await {
        tracing::error!(error = %e, rule = %a.rule, "storing an alert failed");
    }
    if let Some(hook) = webhook.cloned() {
        // Delivery (with its retries) must not hold up evaluating later events.
        tokio::spawn(async move { hook.deliver(&a).await });
    }
}

/// Evaluates appended records in log order; stores, logs and (with a webhook) delivers what
/// they raise.
pub fn spawn(
    engine: Engine,
    store: Store,
    webhook: Option<crate::webhook::Webhook>,
    shutdown: Shutdown,
) -> mpsc::Sender<Vec<(u64, AuditEvent)>> {
    let (tx, mut rx) = mpsc::channel::<Vec<(u64, AuditEvent)>>(1024);
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                b = rx.recv() => match b { Some(b) => b, None => return },
                _ = shutdown.wait() => return,
            };
            for (sequence, event) in &batch {
                for a in engine.evaluate(*sequence, event).await {
                    raise(&store, webhook.as_ref(), a).await;
                }
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: Rules) -> Engine {
        Engine::new(rules, Windows::memory())
    }

    fn rules() -> Rules {
        Rules {
            failed_access: Rate::parse("5/5m").unwrap(),
            high_frequency: Rate::parse("3/1m").unwrap(),
            sources: HashMap::from([(
                "app:billing".to_string(),
                vec![Cidr::parse("10.0.0.0/8").unwrap()],
            )]),
            drill_overdue_after: None,
        }
    }

    #[test]
    fn a_drill_is_overdue_a_window_after_the_last_report_or_after_the_log_began() {
        let day = 86_400_000;
        let after = Duration::from_secs(35 * 86_400);
        let now = 100 * day;
        // Reported 10 days ago: fine, however old the log.
        assert_eq!(
            drill_overdue_since(now, Some(90 * day), Some(0), after),
            None
        );
        // Reported 40 days ago: owed since then.
        assert_eq!(
            drill_overdue_since(now, Some(60 * day), Some(0), after),
            Some(60 * day)
        );
        // Never reported: a log 20 days old is still in its first window, a 100-day-old one
        // is overdue since it began.
        assert_eq!(drill_overdue_since(now, None, Some(80 * day), after), None);
        assert_eq!(drill_overdue_since(now, None, Some(0), after), Some(0));
        // An empty log owes nothing.
        assert_eq!(drill_overdue_since(now, None, None, after), None);
    }

    fn denied(ms: i64) -> AuditEvent {
        AuditEvent {
            time: Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            event_type: "secret_access".into(),
            principal: "app:mallory".into(),
            success: false,
            status_code: "PERMISSION_DENIED".into(),
            ..Default::default()
        }
    }

    async fn fired(e: &Engine, ev: &AuditEvent, rule: &str) -> bool {
        e.evaluate(1, ev).await.iter().any(|a| a.rule == rule)
    }

    #[tokio::test]
    async fn failed_accesses_fire_on_the_sixth_inside_five_minutes_and_not_at_the_edge() {
        let e = engine(rules());
        let t0 = 1_000_000;
        for i in 0..5 {
            assert!(!fired(&e, &denied(t0 + i * 1000), "UnauthorizedSecretAccess").await);
        }
        // The sixth, 1 ms before the first leaves the window: fires.
        assert!(fired(&e, &denied(t0 + 300_000 - 1), "UnauthorizedSecretAccess").await);
        // A seventh in the same window does not fire again.
        assert!(!fired(&e, &denied(t0 + 300_000), "UnauthorizedSecretAccess").await);

        let e = engine(rules());
        for i in 0..5 {
            e.evaluate(1, &denied(t0 + i * 1000)).await;
        }
        // Exactly five minutes after the first: the first is out, only five remain.
        assert!(!fired(&e, &denied(t0 + 300_000), "UnauthorizedSecretAccess").await);
    }

    #[tokio::test]
    async fn refusals_without_a_principal_are_counted_by_address() {
        let e = engine(rules());
        let anonymous = |ms: i64, ip: &str| AuditEvent {
            principal: String::new(),
            source_ip: ip.into(),
            ..denied(ms)
        };
        for i in 0..5 {
            e.evaluate(1, &anonymous(i * 1000, "203.0.113.9")).await;
            e.evaluate(1, &anonymous(i * 1000, "198.51.100.1")).await;
        }
        let raised = e.evaluate(1, &anonymous(6000, "203.0.113.9")).await;
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].principal, "ip:203.0.113.9");
    }

    #[tokio::test]
    async fn reads_sources_decryption_and_escalation_rules_fire() {
        let e = engine(rules());
        let read = |ms: i64| AuditEvent {
            time: Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: 0,
            }),
            event_type: "secret_access".into(),
            principal: "app:scraper".into(),
            success: true,
            ..Default::default()
        };
        for i in 0..3 {
            assert!(!fired(&e, &read(i * 1000), "HighFrequencySecretRequests").await);
        }
        assert!(fired(&e, &read(3000), "HighFrequencySecretRequests").await);

        let from = |ip: &str| AuditEvent {
            principal: "app:billing".into(),
            source_ip: ip.into(),
            success: true,
            ..Default::default()
        };
        assert!(fired(&e, &from("192.168.1.5"), "UnexpectedSource").await);
        assert!(!fired(&e, &from("10.1.2.3"), "UnexpectedSource").await);
        let unlisted = AuditEvent {
            principal: "app:other".into(),
            source_ip: "8.8.8.8".into(),
            ..Default::default()
        };
        assert!(!fired(&e, &unlisted, "UnexpectedSource").await);

        let fd = AuditEvent {
            event_type: "failed_decryption".into(),
            ..Default::default()
        };
        assert!(fired(&e, &fd, "FailedDecryption").await);
        let admin = AuditEvent {
            event_type: "admin".into(),
            operation: "create_credential".into(),
            status_code: "PERMISSION_DENIED".into(),
            ..Default::default()
        };
        assert!(fired(&e, &admin, "PrivilegeEscalationAttempt").await);

        let read = |op: &str, success: bool| AuditEvent {
            event_type: "secret_access".into(),
            operation: op.into(),
            secret_name: "prod/old".into(),
            success,
            ..Default::default()
        };
        assert!(fired(&e, &read("read_expired", true), "ExpiredSecretRead").await);
        assert!(!fired(&e, &read("read_expired", false), "ExpiredSecretRead").await);
        assert!(!fired(&e, &read("read", true), "ExpiredSecretRead").await);
    }

    #[tokio::test]
    async fn rotation_reminders_and_outcomes_reach_the_alert_sinks_from_the_scheduler_only() {
        let e = engine(rules());
        let ev = |service: &str, op: &str| AuditEvent {
            event_type: "rotation".into(),
            service: service.into(),
            operation: op.into(),
            secret_name: "prod/db/main".into(),
            ..Default::default()
        };
        let cases = [
            ("reminder_upcoming", "RotationDue", Severity::Warning),
            ("reminder_overdue", "RotationOverdue", Severity::Critical),
            ("rotation_test_failed", "RotationFailed", Severity::Warning),
            ("rotation_parked", "RotationParked", Severity::Critical),
            ("rotation_completed", "RotationCompleted", Severity::Info),
            ("rotation_notice", "RotationScheduled", Severity::Info),
            (
                "secret_expiring",
                "UpcomingSecretExpiration",
                Severity::Warning,
            ),
            ("secret_expired", "SecretExpired", Severity::Critical),
        ];
        for (op, rule, severity) in cases {
            let alerts = e.evaluate(1, &ev("rotation-scheduler", op)).await;
            assert_eq!(alerts.len(), 1, "{op}");
            assert_eq!(alerts[0].rule, rule);
            assert_eq!(alerts[0].severity, severity as i32);
            assert!(alerts[0].summary.contains("prod/db/main"));
            assert!(e.evaluate(1, &ev("vault-service", op)).await.is_empty());
        }
        let failed = e
            .evaluate(1, &ev("rotation-scheduler", "rotation_set_failed"))
            .await;
        assert!(
            failed[0].summary.contains("failed at set"),
            "{:?}",
            failed[0]
        );
        for quiet in ["rotation_finished", "rotate_now", "set_policy"] {
            assert!(
                e.evaluate(1, &ev("rotation-scheduler", quiet))
                    .await
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn a_failed_backup_copy_or_drill_raises_a_critical_alert_from_its_maker_only() {
        let e = engine(rules());
        let ev = |service: &str, op: &str, at: &str| AuditEvent {
            event_type: "backup".into(),
            service: service.into(),
            operation: op.into(),
            secret_name: at.into(),
            status_code: "UNAVAILABLE".into(),
            ..Default::default()
        };
        let failed = e
            .evaluate(1, &ev("rotation-scheduler", "backup_failed", ""))
            .await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].rule, "BackupFailed");
        assert_eq!(failed[0].severity, Severity::Critical as i32);
        assert!(failed[0].summary.contains("UNAVAILABLE"), "{:?}", failed[0]);
        let copy = e
            .evaluate(
                1,
                &ev("rotation-scheduler", "backup_copy_failed", "s3://b/sentia"),
            )
            .await;
        assert_eq!(copy[0].rule, "BackupFailed");
        assert!(copy[0].summary.contains("s3://b/sentia"));
        let check = e
            .evaluate(
                1,
                &ev(
                    "rotation-scheduler",
                    "backup_check_failed",
                    "/b/sentia-backup-x.sbk",
                ),
            )
            .await;
        assert_eq!(check[0].rule, "BackupCheckFailed");
        assert_eq!(check[0].severity, Severity::Critical as i32);
        assert!(check[0].summary.contains("/b/sentia-backup-x.sbk"));
        let prune = e
            .evaluate(1, &ev("rotation-scheduler", "backup_prune_failed", "/b"))
            .await;
        assert_eq!(prune[0].rule, "BackupPruneFailed");
        assert_eq!(prune[0].severity, Severity::Warning as i32);
        for quiet in ["backup_created", "backup_pruned", "backup_checked"] {
            assert!(
                e.evaluate(1, &ev("rotation-scheduler", quiet, "x"))
                    .await
                    .is_empty()
            );
        }
        assert!(
            e.evaluate(1, &ev("vault-service", "backup_failed", ""))
                .await
                .is_empty()
        );
        let drill = e
            .evaluate(
                1,
                &ev("backup-drill", "backup_drill_failed", "sentia-backup-x.sbk"),
            )
            .await;
        assert_eq!(drill[0].rule, "BackupDrillFailed");
        assert_eq!(drill[0].severity, Severity::Critical as i32);
        assert!(drill[0].summary.contains("sentia-backup-x.sbk"));
        for quiet in [
            ev("backup-drill", "backup_drill_passed", "a.sbk"),
            ev("backup-drill", "backup_failed", ""),
            ev("rotation-scheduler", "backup_drill_failed", "a.sbk"),
        ] {
            assert!(e.evaluate(1, &quiet).await.is_empty(), "{quiet:?}");
        }
    }

    #[test]
    fn rates_and_networks_parse() {
        assert_eq!(
            Rate::parse("5/5m"),
            Some(Rate {
                threshold: 5,
                window: Duration::from_secs(300)
            })
        );
        assert_eq!(Rate::parse("five"), None);
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn memory_windows_count_out_of_order_events_and_forget_quiet_keys() {
        let mut m = MemoryWindows::default();
        let span = 60_000;
        assert_eq!(m.hit("reads:a", 10_000, span), 1);
        assert_eq!(m.hit("reads:a", 30_000, span), 2);
        // Late, but inside the window of the newest: counted where it belongs.
        assert_eq!(m.hit("reads:a", 20_000, span), 2, "10 s and 20 s");
        assert_eq!(
            m.hit("reads:a", 70_000, span),
            3,
            "20 s, 30 s, 70 s: 10 s is out"
        );
        assert_eq!(m.keys["reads:a"].times.len(), 3, "expired from the front");
        // A principal that went quiet is swept once others move time past its window.
        for i in 0..SWEEP_EVERY {
            m.hit("reads:b", 200_000 + i as i64, span);
        }
        assert!(!m.keys.contains_key("reads:a"), "quiet key kept");
        assert!(m.keys.contains_key("reads:b"));
    }
}
