//! The RotationService contract: policies and their precedence, who may do what, status on
//! an injected clock, reminders as audit events, and bad input refused by name.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use sentia_proto::rotation::v1 as pb;
use sentia_proto::rotation::v1::rotation_service_client::RotationServiceClient;
use sentia_proto::vault::v1 as vpb;
use sentia_testkit::Sandbox;
use serde_json::json;
use support::vault::keys::sqlite_url;
use support::*;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_by_name_and_nothing_is_stored() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock())).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let mut c = sched.client(&admin);
    let hour = |h: i64| prost_types::Duration {
        seconds: h * 3600,
        nanos: 0,
    };
    let cases: Vec<(pb::RotationPolicy, &str)> = vec![
        (
            pb::RotationPolicy {
                frequency: Some(hour(0)),
                ..policy("dev/app/a", "random", json!({}))
            },
            "at least 1h",
        ),
        (
            pb::RotationPolicy {
                notify_before: Some(hour(24 * 90)),
                ..policy("dev/app/a", "random", json!({}))
            },
            "notify_before",
        ),
        (
            pb::RotationPolicy {
                grace_period: Some(hour(24 * 100)),
                ..policy("dev/app/a", "random", json!({}))
            },
            "grace_period",
        ),
        (policy("dev/app/a", "magic", json!({})), "unknown rotator"),
        (
            policy("dev/app/a", "random", json!({"lenght": 20})),
            "\"lenght\"",
        ),
        (policy("dev/app/a", "", json!({})), "need a rotator"),
        (policy("dev/app/**x", "random", json!({})), "path_pattern"),
        (
            pb::RotationPolicy {
                frequency: None,
                ..policy("dev/app/a", "random", json!({}))
            },
            "frequency is required",
        ),
        (
            pb::RotationPolicy {
                method: 0,
                ..policy("dev/app/a", "random", json!({}))
            },
            "method",
        ),
        // Outside the well-known range or absurd: refused with the field and the range,
        // never clamped.
        (
            pb::RotationPolicy {
                frequency: Some(prost_types::Duration {
                    seconds: 1 << 62,
                    nanos: 0,
                }),
                ..policy("dev/app/a", "random", json!({}))
            },
            "frequency must be between 0s and 3650d",
        ),
        (
            pb::RotationPolicy {
                grace_period: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: -5,
                }),
                ..policy("dev/app/a", "random", json!({}))
            },
            "grace_period.nanos",
        ),
    ];
    for (p, want) in cases {
        let (got, msg) = code(
            c.set_policy(pb::SetPolicyRequest {
                policy: Some(p.clone()),
            })
            .await,
        );
        assert_eq!(got, Code::InvalidArgument, "{p:?}: {msg}");
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    let (got, _) = code(c.set_policy(pb::SetPolicyRequest { policy: None }).await);
    assert_eq!(got, Code::InvalidArgument);
    s.put("dev/app/a", b"x").await;
    // Nothing was stored: the secret's tier default (unset = internal) is what applies.
    let p = c
        .get_policy(pb::GetPolicyRequest {
            path: "dev/app/a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.source, pb::PolicySource::TierDefault as i32);
    assert_eq!(p.source_default, "internal");
    assert_eq!(p.method, pb::RotationMethod::Manual as i32);
    let (got, msg) = code(
        c.get_policy(pb::GetPolicyRequest {
            path: "dev/app/none".into(),
        })
        .await,
    );
    assert_eq!(got, Code::NotFound, "{msg}");
    assert!(msg.contains("no secret dev/app/none"), "{msg}");
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_policy_beats_a_glob_which_beats_the_default_of_the_secret_class() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock())).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let mut c = sched.client(&admin);
    put_tagged(&s, "prod/app/jwt", "jwt_signing_key", b"v1").await;
    put_tagged(&s, "prod/db/main", "database_password", b"v1").await;
    let get = |path: &str| pb::GetPolicyRequest { path: path.into() };
    let p = c
        .get_policy(get("prod/db/main"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.method, pb::RotationMethod::Manual as i32);
    assert_eq!(p.frequency.unwrap().seconds, 180 * 86_400);
    assert_eq!(p.notify_before.unwrap().seconds, 14 * 86_400);
    let p = c
        .get_policy(get("prod/app/jwt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.method, pb::RotationMethod::Rolling as i32);
    assert_eq!(p.frequency.unwrap().seconds, 90 * 86_400);

    let mut glob = policy("prod/**", "random", json!({}));
    glob.max_attempts = 0; // the default, 5
    c.set_policy(pb::SetPolicyRequest { policy: Some(glob) })
        .await
        .unwrap();
    c.set_policy(pb::SetPolicyRequest {
        policy: Some(policy("prod/db/main", "random", json!({"length": 64}))),
    })
    .await
    .unwrap();
    let p = c
        .get_policy(get("prod/app/jwt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.path_pattern.as_str(), p.max_attempts), ("prod/**", 5));
    let p = c
        .get_policy(get("prod/db/main"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.path_pattern, "prod/db/main");
    let length = &p.rotator_params.unwrap().fields["length"];
    assert_eq!(
        length.kind,
        Some(prost_types::value::Kind::NumberValue(64.0))
    );
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rotate_holders_change_policies_or_rotate_and_list_holders_read_status() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock())).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let (deployer, _) = s.login_as(&["deployment_engineer"]).await;
    let (developer, _) = s.login_as(&["developer"]).await;
    s.put("prod/app/key", b"x").await;
    s.put("dev/app/key", b"x").await;
    sched
        .client(&admin)
        .set_policy(pb::SetPolicyRequest {
            policy: Some(policy("**", "random", json!({}))),
        })
        .await
        .unwrap();

    for token in [&deployer, &developer] {
        let mut c = sched.client(token);
        let (got, msg) = code(
            c.set_policy(pb::SetPolicyRequest {
                policy: Some(policy("dev/**", "random", json!({}))),
            })
            .await,
        );
        assert_eq!(got, Code::PermissionDenied, "{msg}");
        assert!(msg.contains("rotate"), "{msg}");
        let (got, _) = code(
            c.rotate_now(pb::RotateNowRequest {
                path: "dev/app/key".into(),
                reason: "try".into(),
                emergency: false,
            })
            .await,
        );
        assert_eq!(got, Code::PermissionDenied);
    }
    // The seed: deployment engineers read rotation status everywhere.
    let list = sched
        .client(&deployer)
        .list_rotations(pb::ListRotationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<_> = list.rotations.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["dev/app/key", "prod/app/key"]);
    // Developers list dev/** only: prod is left out, and its policy and history refused.
    let list = sched
        .client(&developer)
        .list_rotations(pb::ListRotationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<_> = list.rotations.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["dev/app/key"]);
    let (got, _) = code(
        sched
            .client(&developer)
            .get_rotation_history(pb::GetRotationHistoryRequest {
                path: "prod/app/key".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(got, Code::PermissionDenied);
    let (got, _) = code(
        sched
            .client("not-a-token")
            .list_rotations(pb::ListRotationsRequest::default())
            .await,
    );
    assert_eq!(got, Code::Unauthenticated);
    // Tokens are vault-service's: its root token works here, a revoked JWT does not.
    sched
        .client(&s.root_token)
        .rotate_now(pb::RotateNowRequest {
            path: "dev/app/key".into(),
            reason: "root can".into(),
            emergency: false,
        })
        .await
        .unwrap();
    let (revoked, _) = s.login_as(&["system_admin"]).await;
    s.auth(&revoked)
        .await
        .revoke_token(vpb::RevokeTokenRequest::default())
        .await
        .unwrap();
    let (got, msg) = code(
        sched
            .client(&revoked)
            .list_rotations(pb::ListRotationsRequest::default())
            .await,
    );
    assert_eq!(got, Code::Unauthenticated, "{msg}");
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_now_needs_a_reason_an_existing_secret_and_a_rotator_and_runs_once_at_a_time() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let mut c = sched.client(&admin);
    put_tagged(&s, "prod/db/main", "database_password", b"v1").await;
    s.put("prod/app/key", b"x").await;
    c.set_policy(pb::SetPolicyRequest {
        policy: Some(policy("prod/app/key", "random", json!({}))),
    })
    .await
    .unwrap();
    let req = |path: &str, reason: &str| pb::RotateNowRequest {
        path: path.into(),
        reason: reason.into(),
        emergency: false,
    };
    let (got, msg) = code(c.rotate_now(req("prod/app/key", " ")).await);
    assert_eq!(got, Code::InvalidArgument);
    assert!(msg.contains("reason"), "{msg}");
    let (got, _) = code(c.rotate_now(req("prod/app/key", &"x".repeat(513))).await);
    assert_eq!(got, Code::InvalidArgument);
    let (got, msg) = code(c.rotate_now(req("prod/app/nope", "why")).await);
    assert_eq!(got, Code::NotFound, "{msg}");
    let (got, msg) = code(c.rotate_now(req("prod/db/main", "leaked")).await);
    assert_eq!(got, Code::FailedPrecondition, "manual by default: {msg}");
    assert!(msg.contains("rotator"), "{msg}");

    let first = c
        .rotate_now(req("prod/app/key", "suspected leak"))
        .await
        .unwrap()
        .into_inner();
    let (got, msg) = code(c.rotate_now(req("prod/app/key", "again")).await);
    assert_eq!(got, Code::Aborted);
    assert!(msg.contains(&first.id), "names the running rotation: {msg}");
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_next_due_and_overdue_on_the_injected_clock_and_pages() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let mut c = sched.client(&admin);
    for i in 0..3 {
        put_tagged(&s, &format!("prod/db/db{i}"), "database_password", b"v1").await;
    }
    s.put("prod/other/untracked", b"x").await;
    let list = |overdue_only: bool, page_size: i32, page_token: String| pb::ListRotationsRequest {
        prefix: "prod".into(),
        overdue_only,
        page_size,
        page_token,
    };
    let all = c
        .list_rotations(list(false, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.rotations.len(), 4, "every secret has a policy");
    let untagged = &all.rotations[3];
    assert_eq!(untagged.path, "prod/other/untracked");
    let rule = untagged.policy.as_ref().unwrap();
    assert_eq!(
        (rule.source, rule.source_default.as_str()),
        (pb::PolicySource::TierDefault as i32, "internal")
    );
    assert_eq!(
        untagged.next_due_time.unwrap().seconds - untagged.last_rotation_time.unwrap().seconds,
        365 * 86_400
    );
    let first = &all.rotations[0];
    let rule = first.policy.as_ref().unwrap();
    assert_eq!(
        (rule.source, rule.source_default.as_str()),
        (pb::PolicySource::ClassDefault as i32, "database_password")
    );
    assert!(!first.overdue);
    assert_eq!(first.method, pb::RotationMethod::Manual as i32);
    let created = first.last_rotation_time.unwrap().seconds;
    assert_eq!(
        first.next_due_time.unwrap().seconds,
        created + 180 * 86_400,
        "due 180 days after the value was written"
    );
    let none = c
        .list_rotations(list(true, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.rotations.is_empty());

    clock.advance(181 * DAY);
    let page1 = c
        .list_rotations(list(true, 2, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page1.rotations.len(),
        2,
        "the 365-day tier default is not overdue"
    );
    assert!(page1.rotations.iter().all(|r| r.overdue));
    assert!(!page1.next_page_token.is_empty());
    let page2 = c
        .list_rotations(list(true, 2, page1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.rotations.len(), 1);
    assert_eq!(page2.rotations[0].path, "prod/db/db2");
    assert!(page2.next_page_token.is_empty());
    let (got, _) = code(c.list_rotations(list(false, 5000, String::new())).await);
    assert_eq!(got, Code::InvalidArgument);
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_secret_is_reminded_once_before_it_is_due_and_once_when_overdue_in_the_audit_log()
{
    let clock = clock();
    let Some(sandbox) = Sandbox::builder()
        .audit()
        .scheduler(hooks(&clock))
        .start()
        .await
    else {
        return;
    };
    let (s, audit) = (sandbox.vault(), &sandbox.audit().addr);
    let t0 = clock.now_ms();
    put_tagged(s, "prod/db/main", "database_password", b"v1").await;
    s.put("zz/canary", b"v1").await;
    let path = "prod/db/main";
    // 180 d manual, notify 14 d before: nothing at day 165, one reminder from day 166 on.
    scan_at(s, audit, &clock, t0 + 165 * DAY, 1).await;
    assert!(operations_on(audit, path).await.is_empty());
    clock.advance(DAY + 1000);
    wait_for_operations(audit, path, &["reminder_upcoming"]).await;
    scan_at(s, audit, &clock, t0 + 167 * DAY + 1000, 2).await;
    assert_eq!(
        operations_on(audit, path).await,
        ["reminder_upcoming"],
        "once per due date"
    );
    clock.advance(14 * DAY);
    wait_for_operations(audit, path, &["reminder_upcoming", "reminder_overdue"]).await;
    // ... and through the alert sinks (stored alerts; the webhook gets the same).
    let mut rules = Vec::new();
    for _ in 0..100 {
        rules = alerts(audit)
            .await
            .into_iter()
            .filter(|a| a.secret_name == "prod/db/main")
            .map(|a| a.rule)
            .collect::<Vec<_>>();
        if rules.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rules.sort();
    assert_eq!(rules, ["RotationDue", "RotationOverdue"]);
    // A person writes a new value: that is the rotation the schedule counts from. (vault
    // stamps versions with the real clock, so compare with the version's own time.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.put("prod/db/main", b"v2").await;
    let written = s
        .secrets(&s.root_token)
        .await
        .describe_secret(vpb::DescribeSecretRequest {
            path: "prod/db/main".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .into_iter()
        .find(|v| v.version == 2)
        .unwrap()
        .create_time
        .unwrap()
        .seconds;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let status = sandbox
        .scheduler()
        .client(&admin)
        .list_rotations(pb::ListRotationsRequest {
            prefix: "prod/db".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let st = &status.rotations[0];
    assert_eq!(st.last_rotation_time.unwrap().seconds, written);
    assert_eq!(st.next_due_time.unwrap().seconds, written + 180 * 86_400);
    sandbox.stop().await;
}

/// The operations rotation-scheduler did on its own about `path` (not calls it served),
/// oldest first.
async fn operations_on(audit: &str, path: &str) -> Vec<String> {
    rotation_events(audit)
        .await
        .into_iter()
        .filter(|e| e.secret_name == path && e.principal == "rotation-scheduler")
        .map(|e| e.operation)
        .collect()
}

/// Waits (30 s at most) until rotation-scheduler recorded `ops` about `path`, exactly.
async fn wait_for_operations(audit: &str, path: &str, ops: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen = operations_on(audit, path).await;
        if seen.len() >= ops.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ops, "{path}");
}

/// Moves `clock` to `at` and waits until a scan at that time reached the canary secret
/// `zz/canary` (its expiry is set just before `at`, so that scan records `secret_expired`, its
/// `seen`th event): scans take paths in order, so that scan saw every other secret at `at`
/// too. How "nothing happened" is checked without a sleep.
async fn scan_at(
    s: &sentia_testkit::Stack,
    audit: &str,
    clock: &rotation_scheduler::Clock,
    at: i64,
    seen: usize,
) {
    expire_at(s, "zz/canary", at - 60_000).await;
    clock.advance(at - clock.now_ms());
    let mut n = 0;
    for _ in 0..600 {
        n = operations_on(audit, "zz/canary").await.len();
        if n == seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no scan at {at} reached the canary ({n} canary events, {seen} expected)");
}

/// `path`'s rotation status.
async fn status_of(
    c: &RotationServiceClient<sentia_runtime::client::AuthedChannel>,
    path: &str,
) -> pb::RotationStatus {
    c.clone()
        .list_rotations(pb::ListRotationsRequest {
            prefix: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rotations
        .into_iter()
        .find(|r| r.path == path)
        .unwrap()
}

/// Sets `path`'s expiry to `ms` (Unix ms).
async fn expire_at(s: &sentia_testkit::Stack, path: &str, ms: i64) {
    s.secrets(&s.root_token)
        .await
        .update_secret_metadata(vpb::UpdateSecretMetadataRequest {
            metadata: Some(vpb::SecretMetadata {
                path: path.into(),
                expire_time: Some(sentia_proto::wkt::timestamp(ms)),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["expire_time".into()],
            }),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_defaults_notices_and_expiry_go_out_once_each_at_their_window_on_the_injected_clock() {
    let clock = clock();
    let t0 = clock.now_ms();
    let Some(sandbox) = Sandbox::builder()
        .audit()
        .scheduler(hooks(&clock))
        .start()
        .await
    else {
        return;
    };
    let (s, audit) = (sandbox.vault(), sandbox.audit().addr.clone());
    // Tier 1 without a class: the tier default, 90 d manual with 14 d notice.
    s.secrets(&s.root_token)
        .await
        .put_secret(vpb::PutSecretRequest {
            path: "prod/critical/token".into(),
            value: b"v1".to_vec(),
            metadata: Some(vpb::SecretMetadata {
                tier: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // An API key: the class default, 90 d automated with 7 d notice.
    put_tagged(s, "prod/api/stripe", "api_key", b"v1").await;
    // Expires in 30 days: notice from day 23 (7 d), expired at day 30.
    s.put("prod/leaving", b"v1").await;
    expire_at(s, "prod/leaving", t0 + 30 * DAY).await;
    // The canary sorts after every other path: once a scan at the new time reached it, that
    // scan saw every other secret at that time too.
    s.put("zz/canary", b"v1").await;
    scan_at(s, &audit, &clock, t0 + 22 * DAY, 1).await;
    for path in ["prod/critical/token", "prod/api/stripe", "prod/leaving"] {
        assert!(
            operations_on(&audit, path).await.is_empty(),
            "nothing is due for {path} at day 22"
        );
    }
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let c = sandbox.scheduler().client(&admin);
    let stripe = status_of(&c, "prod/api/stripe").await;
    assert!(stripe.notice_sent_time.is_none());
    assert_eq!(
        stripe.notice_time.unwrap().seconds,
        stripe.next_due_time.unwrap().seconds - 7 * 86_400
    );

    clock.advance(DAY + 60_000);
    wait_for_operations(&audit, "prod/leaving", &["secret_expiring"]).await;
    clock.advance(7 * DAY);
    wait_for_operations(
        &audit,
        "prod/leaving",
        &["secret_expiring", "secret_expired"],
    )
    .await;
    let leaving = status_of(&c, "prod/leaving").await;
    assert_eq!(leaving.expire_time.unwrap().seconds, (t0 + 30 * DAY) / 1000);

    scan_at(s, &audit, &clock, t0 + 75 * DAY, 2).await;
    assert!(
        operations_on(&audit, "prod/critical/token")
            .await
            .is_empty()
    );
    clock.advance(DAY + 60_000);
    wait_for_operations(&audit, "prod/critical/token", &["reminder_upcoming"]).await;
    scan_at(s, &audit, &clock, t0 + 82 * DAY, 3).await;
    assert!(operations_on(&audit, "prod/api/stripe").await.is_empty());
    clock.advance(DAY + 60_000);
    wait_for_operations(&audit, "prod/api/stripe", &["rotation_notice"]).await;

    // Once each: later scans inside the same windows send nothing more.
    scan_at(s, &audit, &clock, t0 + 88 * DAY, 4).await;
    assert_eq!(
        operations_on(&audit, "prod/api/stripe").await,
        ["rotation_notice"]
    );
    assert_eq!(
        operations_on(&audit, "prod/critical/token").await,
        ["reminder_upcoming"]
    );
    assert_eq!(
        operations_on(&audit, "prod/leaving").await,
        ["secret_expiring", "secret_expired"]
    );

    // Status says which rule applied and that the notice went out.
    let stripe = status_of(&c, "prod/api/stripe").await;
    assert!(stripe.notice_sent_time.is_some());
    let rule = stripe.policy.unwrap();
    assert_eq!(
        (rule.source, rule.source_default.as_str()),
        (pb::PolicySource::ClassDefault as i32, "api_key")
    );
    let token = status_of(&c, "prod/critical/token").await;
    assert!(token.notice_sent_time.is_some());
    assert_eq!(
        token.next_due_time.unwrap().seconds - token.last_rotation_time.unwrap().seconds,
        90 * 86_400
    );
    let rule = token.policy.unwrap();
    assert_eq!(
        (rule.source, rule.source_default.as_str()),
        (pb::PolicySource::TierDefault as i32, "critical")
    );

    // Every notice reached the alert sinks.
    let want = [
        ("prod/api/stripe", "RotationScheduled"),
        ("prod/critical/token", "RotationDue"),
        ("prod/leaving", "SecretExpired"),
        ("prod/leaving", "UpcomingSecretExpiration"),
    ];
    let mut got = Vec::new();
    for _ in 0..200 {
        got = alerts(&audit)
            .await
            .into_iter()
            .filter(|a| a.secret_name.starts_with("prod/"))
            .map(|a| (a.secret_name, a.rule))
            .collect::<Vec<_>>();
        got.sort();
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_is_not_rotated_and_rotate_now_says_how_to_extend_it() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock())).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let mut c = sched.client(&admin);
    put_tagged(&s, "prod/api/old", "api_key", b"v1").await;
    expire_at(&s, "prod/api/old", sentia_proto::wkt::now_ms() - 1000).await;
    let (got, msg) = code(
        c.rotate_now(pb::RotateNowRequest {
            path: "prod/api/old".into(),
            reason: "leak".into(),
            emergency: true,
        })
        .await,
    );
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains("expired at") && msg.contains("--expires"),
        "{msg}"
    );
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_is_reminded_like_a_manual_secret_30_days_before_a_year_and_at_it() {
    let clock = clock();
    let Some(sandbox) = Sandbox::builder()
        .audit()
        .scheduler(hooks(&clock))
        .start()
        .await
    else {
        return;
    };
    let (s, audit) = (sandbox.vault(), sandbox.audit().addr.clone());
    let master = rotation_scheduler::engine::MASTER_KEY;
    let t0 = clock.now_ms();
    s.put("zz/canary", b"v1").await;
    // The master key is checked after every secret: a scan that reached the canary at day 334
    // checked it too. No reminder yet.
    scan_at(s, &audit, &clock, t0 + 334 * DAY, 1).await;
    assert!(operations_on(&audit, master).await.is_empty());
    clock.advance(2 * DAY);
    wait_for_operations(&audit, master, &["reminder_upcoming"]).await;
    clock.advance(30 * DAY);
    wait_for_operations(&audit, master, &["reminder_upcoming", "reminder_overdue"]).await;
    sandbox.stop().await;
}
