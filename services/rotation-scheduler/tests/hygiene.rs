//! Captures every log line (TRACE, all targets) through a successful and a failed rotation of
//! a real Postgres role, and proves that no password (old, new or discarded) and no password
//! verifier reaches the logs, the audit log or the scheduler's database — while the audit
//! log does record every outcome.
#![allow(clippy::unwrap_used)]

mod support;

use rotation_scheduler::Hooks;
use rotation_scheduler::steps::Step;
use sentia_proto::rotation::v1 as pb;
use sentia_proto::vault::v1 as vpb;
use sentia_testkit::Sandbox;
use serde_json::json;
use support::vault::keys::Capture;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_verifier_reaches_logs_audit_or_the_scheduler_database() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let clock = clock();
    let Some(mut sandbox) = Sandbox::builder()
        .audit()
        .scheduler(hooks(&clock))
        .start()
        .await
    else {
        return;
    };
    let s = sandbox.vault();
    let audit = sandbox.audit().addr.clone();
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let role = create_role(&pg_admin, "OLD-PASSWORD-CANARY-7f3a").await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    s.put("prod/db/app", &login(&role, "OLD-PASSWORD-CANARY-7f3a"))
        .await;
    let params = json!({"admin_secret": "prod/admin/pg", "roles": [role.clone()]});

    // A rotation that succeeds, through cleanup.
    let sched = sandbox.scheduler();
    let mut p = policy("prod/db/app", "postgres_password", params);
    p.max_attempts = 1;
    sched
        .client(&admin)
        .set_policy(pb::SetPolicyRequest { policy: Some(p) })
        .await
        .unwrap();
    let rotate = |sched: &Scheduler| {
        let mut c = sched.client(&admin);
        async move {
            c.rotate_now(pb::RotateNowRequest {
                path: "prod/db/app".into(),
                reason: "hygiene".into(),
                emergency: false,
            })
            .await
            .unwrap()
        }
    };
    rotate(sched).await;
    wait_for(&sched.client(&admin), "prod/db/app", Step::Cleanup).await;
    clock.advance(DAY + 1);
    wait_for(&sched.client(&admin), "prod/db/app", Step::Completed).await;

    // A rotation whose test fails: rolled back, and parked at once (max_attempts 1).
    let failing = sandbox
        .restart_scheduler(Hooks {
            fail: Some(Step::Test),
            ..hooks(&clock)
        })
        .await;
    rotate(failing).await;
    wait_for(&failing.client(&admin), "prod/db/app", Step::Parked).await;
    let db_file = failing
        .database_url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let s = sandbox.vault();

    // Every value the secret ever had, including the discarded PENDING one.
    let mut passwords = vec!["OLD-PASSWORD-CANARY-7f3a".to_string()];
    for version in 2..=3 {
        let r = s
            .secrets(&s.root_token)
            .await
            .get_secret(vpb::GetSecretRequest {
                path: "prod/db/app".into(),
                selector: Some(vpb::get_secret_request::Selector::Version(version)),
                allow_expired: false,
            })
            .await;
        if let Ok(r) = r {
            passwords.push(parse_login(&r.into_inner().value).1);
        }
    }
    assert_eq!(
        passwords.len(),
        2,
        "v2 is CURRENT; v3 (discarded) is destroyed"
    );
    let mut conn = pg(&pg_admin).await;
    let verifier: String =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let salt_and_keys = verifier.split('$').nth(2).unwrap().to_string();

    let ops: Vec<String> = rotation_events(&audit)
        .await
        .into_iter()
        .filter(|e| e.secret_name == "prod/db/app")
        .map(|e| e.operation)
        .collect();
    for want in [
        "set_policy",
        "rotate_now",
        "rotation_finished",
        "rotation_completed",
        "rotation_test_failed",
        "rotation_rolled_back",
        "rotation_parked",
    ] {
        assert!(ops.iter().any(|o| o == want), "{want} not audited: {ops:?}");
    }
    let audit_text = format!("{:?}", rotation_events(&audit).await);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("rotation step done"), "logging was captured");
    let mut db_bytes = std::fs::read(&db_file).unwrap();
    if let Ok(wal) = std::fs::read(format!("{db_file}-wal")) {
        db_bytes.extend(wal);
    }
    let db_text = String::from_utf8_lossy(&db_bytes);
    for (what, text) in [
        ("logs", logs.as_str()),
        ("audit", audit_text.as_str()),
        ("database", &db_text),
    ] {
        for p in &passwords {
            assert!(!text.contains(p.as_str()), "a password is in the {what}");
        }
        assert!(
            !text.contains(&salt_and_keys),
            "the role's verifier is in the {what}"
        );
    }
    sandbox.stop().await;
    drop_role(&pg_admin, &role).await;
}
