//! rotation-scheduler against real key-service, vault-service, Postgres roles and Redis ACL
//! users: every step, rollback, crashes between steps, racing replicas, reminders.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use rotation_scheduler::Hooks;
use rotation_scheduler::steps::Step;
use sentia_proto::rotation::v1 as pb;
use sentia_proto::vault::v1 as vpb;
use serde_json::json;
use support::vault::get;
use support::vault::keys::sqlite_url;
use support::*;

async fn current(s: &Stack, path: &str) -> (u64, Vec<u8>) {
    let r = s
        .secrets(&s.root_token)
        .await
        .get_secret(get(path))
        .await
        .unwrap()
        .into_inner();
    (r.version, r.value)
}

async fn describe(s: &Stack, path: &str) -> vpb::DescribeSecretResponse {
    s.secrets(&s.root_token)
        .await
        .describe_secret(vpb::DescribeSecretRequest { path: path.into() })
        .await
        .unwrap()
        .into_inner()
}

fn state_of(d: &vpb::DescribeSecretResponse, version: u64) -> vpb::VersionState {
    d.versions
        .iter()
        .find(|v| v.version == version)
        .map(|v| v.state())
        .unwrap()
}

async fn set_policy(sched: &Scheduler, token: &str, p: pb::RotationPolicy) {
    sched
        .client(token)
        .set_policy(pb::SetPolicyRequest { policy: Some(p) })
        .await
        .unwrap();
}

/// Sets a `postgres_password` policy on `path` rotating `roles`, with the admin connection
/// URL in the secret `admin_secret`.
async fn set_postgres_policy(
    sched: &Scheduler,
    token: &str,
    path: &str,
    admin_secret: &str,
    roles: &[&str],
) {
    let params = json!({"admin_secret": admin_secret, "roles": roles});
    set_policy(sched, token, policy(path, "postgres_password", params)).await;
}

async fn rotate_now(sched: &Scheduler, token: &str, path: &str) -> pb::Rotation {
    sched
        .client(token)
        .rotate_now(pb::RotateNowRequest {
            path: path.into(),
            reason: "test".into(),
            emergency: false,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_rotates_on_demand_and_the_old_version_is_destroyed_when_grace_ends() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    s.put("prod/app/stripe", b"sk_live_old").await;
    set_policy(
        &sched,
        &admin,
        policy(
            "prod/app/*",
            "api_key",
            json!({"prefix": "sk_live_", "length": 32}),
        ),
    )
    .await;
    let started = rotate_now(&sched, &admin, "prod/app/stripe").await;
    assert_eq!(started.step, Step::CreatePending as i32);
    assert_eq!(started.reason, "test");

    let client = sched.client(&admin);
    let r = wait_for(&client, "prod/app/stripe", Step::Cleanup).await;
    let (version, value) = current(&s, "prod/app/stripe").await;
    assert_eq!((version, r.pending_version), (2, 2));
    let value = String::from_utf8(value).unwrap();
    assert!(
        value.starts_with("sk_live_") && value.len() == 8 + 32,
        "{value}"
    );
    let d = describe(&s, "prod/app/stripe").await;
    let labels = &d.metadata.as_ref().unwrap().labels;
    assert_eq!(
        labels.get("PREVIOUS"),
        Some(&1),
        "old value still readable in grace"
    );
    assert_eq!(
        labels.get("PENDING"),
        None,
        "the promoted version is not PENDING"
    );

    clock.advance(DAY + 1);
    wait_for(&client, "prod/app/stripe", Step::Completed).await;
    let d = describe(&s, "prod/app/stripe").await;
    assert_eq!(state_of(&d, 1), vpb::VersionState::Destroyed);
    assert_eq!(d.versions.len(), 2, "exactly one new version");

    let h = client
        .clone()
        .get_rotation_history(pb::GetRotationHistoryRequest {
            path: "prod/app/stripe".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.rotations.len(), 1);
    assert_eq!(h.rotations[0].id, started.id);
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_role_password_rotates_and_only_the_new_one_is_stored_on_the_role() {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Postgres).await else {
        return;
    };
    let clock = clock();
    let db = vault::database(Backend::Postgres).await.unwrap();
    let sched = Scheduler::start(&s, &db, hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let role = create_role(&pg_admin, "initial-password").await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    s.put("prod/db/app", &login(&role, "initial-password"))
        .await;
    set_postgres_policy(
        &sched,
        &admin,
        "prod/db/app",
        "prod/admin/pg",
        &[role.as_str()],
    )
    .await;
    rotate_now(&sched, &admin, "prod/db/app").await;
    wait_for(&sched.client(&admin), "prod/db/app", Step::Cleanup).await;
    let (user, password) = parse_login(&current(&s, "prod/db/app").await.1);
    assert_eq!(user, role);
    assert_ne!(password, "initial-password");
    assert!(role_has_password(&pg_admin, &role, &password).await);
    assert!(!role_has_password(&pg_admin, &role, "initial-password").await);
    sched.stop().await;
    s.stop().await;
    drop_role(&pg_admin, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_holds_its_step_without_rollback_and_the_rotation_completes_once_it_is_back()
 {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Postgres).await else {
        return;
    };
    let clock = clock();
    let db = vault::database(Backend::Postgres).await.unwrap();
    let sched = Scheduler::start(&s, &db, hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let role = create_role(&pg_admin, "initial-password").await;
    // The admin secret points at a port nothing listens on: the target is "down".
    s.put(
        "prod/admin/pg-down",
        b"postgres://postgres@127.0.0.1:1/postgres",
    )
    .await;
    s.put("prod/db/flaky", &login(&role, "initial-password"))
        .await;
    set_postgres_policy(
        &sched,
        &admin,
        "prod/db/flaky",
        "prod/admin/pg-down",
        &[role.as_str()],
    )
    .await;
    rotate_now(&sched, &admin, "prod/db/flaky").await;
    let held = wait_until(
        &sched.client(&admin),
        "prod/db/flaky",
        "a failed set",
        |r| !r.last_error.is_empty(),
    )
    .await;
    assert_eq!(
        held.step,
        Step::Set as i32,
        "held at set, not rolled back: {held:?}"
    );
    assert_eq!(
        held.attempts, 0,
        "an unreachable target is not a failed attempt"
    );
    assert!(
        held.last_error.contains("connecting to Postgres"),
        "{held:?}"
    );
    assert!(role_has_password(&pg_admin, &role, "initial-password").await);

    // The target comes back (its admin URL is corrected) and the backoff passes.
    s.put("prod/admin/pg-down", pg_admin.as_bytes()).await;
    clock.advance(31_000);
    wait_for(&sched.client(&admin), "prod/db/flaky", Step::Cleanup).await;
    let (user, password) = parse_login(&current(&s, "prod/db/flaky").await.1);
    assert_eq!(user, role);
    assert!(role_has_password(&pg_admin, &role, &password).await);
    let history = sched
        .client(&admin)
        .get_rotation_history(pb::GetRotationHistoryRequest {
            path: "prod/db/flaky".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.rotations.len(), 1, "one rotation, never restarted");
    sched.stop().await;
    s.stop().await;
    drop_role(&pg_admin, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_roles_alternate_and_the_idle_one_is_locked_after_grace() {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let a = create_role(&pg_admin, "a-password").await;
    let b = create_role(&pg_admin, "b-password").await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    s.put("prod/db/app", &login(&a, "a-password")).await;
    set_postgres_policy(
        &sched,
        &admin,
        "prod/db/app",
        "prod/admin/pg",
        &[a.as_str(), b.as_str()],
    )
    .await;
    let client = sched.client(&admin);
    rotate_now(&sched, &admin, "prod/db/app").await;
    wait_for(&client, "prod/db/app", Step::Cleanup).await;
    let (user, password) = parse_login(&current(&s, "prod/db/app").await.1);
    assert_eq!(user, b, "the role not in use was changed");
    assert!(role_has_password(&pg_admin, &b, &password).await);
    assert!(
        role_has_password(&pg_admin, &a, "a-password").await,
        "clients still on the old role keep working during grace"
    );
    clock.advance(DAY + 1);
    wait_for(&client, "prod/db/app", Step::Completed).await;
    assert!(
        !role_has_password(&pg_admin, &a, "a-password").await,
        "the old role's password is revoked after grace"
    );
    // The next rotation flips back to the first role.
    rotate_now(&sched, &admin, "prod/db/app").await;
    wait_for(&client, "prod/db/app", Step::Cleanup).await;
    let (user, password) = parse_login(&current(&s, "prod/db/app").await.1);
    assert_eq!(user, a);
    assert!(role_has_password(&pg_admin, &a, &password).await);
    sched.stop().await;
    s.stop().await;
    drop_role(&pg_admin, &a).await;
    drop_role(&pg_admin, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_restores_the_postgres_role_discards_pending_and_parks_after_max_attempts() {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(
        &s,
        &sqlite_url(),
        Hooks {
            fail: Some(Step::Test),
            ..hooks(&clock)
        },
    )
    .await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let role = create_role(&pg_admin, "keep-me").await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    s.put("prod/db/app", &login(&role, "keep-me")).await;
    let mut p = policy(
        "prod/db/app",
        "postgres_password",
        json!({"admin_secret": "prod/admin/pg", "roles": [role.clone()]}),
    );
    p.max_attempts = 2;
    set_policy(&sched, &admin, p).await;
    let client = sched.client(&admin);
    rotate_now(&sched, &admin, "prod/db/app").await;

    // First attempt: set changed the role, test failed, rollback put the old password back.
    let r = wait_until(&client, "prod/db/app", "rolled back once", |r| {
        r.step == Step::CreatePending as i32 && r.attempts == 1
    })
    .await;
    assert!(r.last_error.contains("test fails"), "{}", r.last_error);
    assert!(role_has_password(&pg_admin, &role, "keep-me").await);
    let d = describe(&s, "prod/db/app").await;
    assert_eq!(
        state_of(&d, 2),
        vpb::VersionState::Destroyed,
        "PENDING discarded"
    );
    assert_eq!(current(&s, "prod/db/app").await.0, 1, "CURRENT untouched");

    // Backoff (30 s) on the injected clock, then the second and last attempt.
    clock.advance(31_000);
    let r = wait_for(&client, "prod/db/app", Step::Parked).await;
    assert_eq!(r.attempts, 2);
    assert!(role_has_password(&pg_admin, &role, "keep-me").await);
    assert_eq!(current(&s, "prod/db/app").await.0, 1);
    let d = describe(&s, "prod/db/app").await;
    assert_eq!(state_of(&d, 3), vpb::VersionState::Destroyed);
    // Parked is not retried.
    clock.advance(10 * DAY);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(describe(&s, "prod/db/app").await.versions.len(), 3);
    sched.stop().await;
    s.stop().await;
    drop_role(&pg_admin, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_any_two_steps_a_rotation_completes_exactly_once_on_another_replica() {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Postgres).await else {
        return;
    };
    let (admin, _) = s.login_as(&["system_admin"]).await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    for crash in [
        Step::CreatePending,
        Step::Set,
        Step::Test,
        Step::Finish,
        Step::Cleanup,
    ] {
        let clock = clock();
        let db = vault::database(Backend::Postgres).await.unwrap();
        let role = create_role(&pg_admin, "before").await;
        let path = format!("prod/db/crash-{}", crash as i32);
        s.put(&path, &login(&role, "before")).await;
        let first = Scheduler::start(
            &s,
            &db,
            Hooks {
                crash_after: Some(crash),
                ..hooks(&clock)
            },
        )
        .await;
        set_postgres_policy(&first, &admin, &path, "prod/admin/pg", &[role.as_str()]).await;
        rotate_now(&first, &admin, &path).await;
        if crash == Step::Cleanup {
            wait_for(&first.client(&admin), &path, Step::Cleanup).await;
            clock.advance(DAY + 1);
        }
        assert_eq!(
            first.died().await,
            rotation_scheduler::Stopped::Crashed,
            "{crash:?}"
        );

        // Another replica takes over once the dead one's lease runs out.
        let second = Scheduler::start(&s, &db, hooks(&clock)).await;
        clock.advance(6_000);
        let client = second.client(&admin);
        let mut done = wait_for(&client, &path, Step::Cleanup).await;
        if done.step != Step::Completed as i32 {
            clock.advance(DAY + 1);
            done = wait_for(&client, &path, Step::Completed).await;
        }
        assert_eq!(done.attempts, 0, "{crash:?}: no step counted as failed");

        let h = client
            .clone()
            .get_rotation_history(pb::GetRotationHistoryRequest {
                path: path.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.rotations.len(), 1, "{crash:?}: one rotation");
        let d = describe(&s, &path).await;
        assert_eq!(d.versions.len(), 2, "{crash:?}: exactly one new version");
        assert_eq!(state_of(&d, 1), vpb::VersionState::Destroyed, "{crash:?}");
        let (version, value) = current(&s, &path).await;
        assert_eq!(version, 2, "{crash:?}");
        let (user, password) = parse_login(&value);
        assert_eq!(user, role);
        assert!(
            role_has_password(&pg_admin, &role, &password).await,
            "{crash:?}: the role and vault agree"
        );
        second.stop().await;
        drop_role(&pg_admin, &role).await;
    }
    s.stop().await;
}

/// RotateNow of prod/app/key0 on both replicas at the same moment.
async fn race(
    a: &Scheduler,
    b: &Scheduler,
    token: &str,
    emergency: bool,
) -> (
    Result<tonic::Response<pb::Rotation>, tonic::Status>,
    Result<tonic::Response<pb::Rotation>, tonic::Status>,
) {
    let req = || pb::RotateNowRequest {
        path: "prod/app/key0".into(),
        reason: "race".into(),
        emergency,
    };
    let (mut ca, mut cb) = (a.client(token), b.client(token));
    tokio::join!(ca.rotate_now(req()), cb.rotate_now(req()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_a_due_secret_run_one_rotation() {
    let Some(s) = stack(Backend::Postgres).await else {
        return;
    };
    let clock = clock();
    let db = vault::database(Backend::Postgres).await.unwrap();
    let a = Scheduler::start(&s, &db, hooks(&clock)).await;
    let b = Scheduler::start(&s, &db, hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    for i in 0..5 {
        s.put(&format!("prod/app/key{i}"), b"old").await;
    }
    set_policy(&a, &admin, policy("prod/app/**", "random", json!({}))).await;
    // Both replicas would start the same rotations at once when they fall due.
    clock.advance(91 * DAY);
    for i in 0..5 {
        let path = format!("prod/app/key{i}");
        wait_for(&b.client(&admin), &path, Step::Cleanup).await;
    }
    // RotateNow on both replicas at once while one is running: one wins, one is ABORTED.
    let (ra, rb) = race(&a, &b, &admin, false).await;
    let aborted = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == tonic::Code::Aborted))
        .count();
    assert_eq!(
        aborted, 2,
        "a rotation of key0 is still in its grace period"
    );
    clock.advance(DAY + 1);
    for i in 0..5 {
        let path = format!("prod/app/key{i}");
        wait_for(&a.client(&admin), &path, Step::Completed).await;
        let d = describe(&s, &path).await;
        assert_eq!(d.versions.len(), 2, "{path}: one rotation, not two");
        let h = a
            .client(&admin)
            .get_rotation_history(pb::GetRotationHistoryRequest {
                path: path.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.rotations.len(), 1, "{path}");
        assert_eq!(h.rotations[0].reason, "scheduled");
    }
    let (ra, rb) = race(&a, &b, &admin, true).await;
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one of two simultaneous RotateNow calls starts a rotation: {ra:?} {rb:?}"
    );
    a.stop().await;
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_acl_user_gets_a_new_password_beside_the_old_until_grace_ends() {
    let Some(redis_url) = vault::redis_url() else {
        return;
    };
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let user = unique("rot");
    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">old-redis-password")
        .arg("~*")
        .arg("+ping")
        .query_async(&mut conn)
        .await
        .unwrap();
    s.put("prod/admin/redis", redis_url.as_bytes()).await;
    s.put("prod/cache/app", &login(&user, "old-redis-password"))
        .await;
    set_policy(
        &sched,
        &admin,
        policy(
            "prod/cache/app",
            "redis_acl",
            json!({"admin_secret": "prod/admin/redis", "username": user.clone()}),
        ),
    )
    .await;
    let client = sched.client(&admin);
    rotate_now(&sched, &admin, "prod/cache/app").await;
    wait_for(&client, "prod/cache/app", Step::Cleanup).await;
    let (_, password) = parse_login(&current(&s, "prod/cache/app").await.1);
    let auth = |pw: String| {
        let (url, user) = (redis_url.clone(), user.clone());
        async move {
            let mut c = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::cmd("AUTH")
                .arg(&user)
                .arg(&pw)
                .query_async::<()>(&mut c)
                .await
                .is_ok()
        }
    };
    assert!(auth(password.clone()).await, "the new password works");
    assert!(
        auth("old-redis-password".into()).await,
        "the old one too, in grace"
    );
    clock.advance(DAY + 1);
    wait_for(&client, "prod/cache/app", Step::Completed).await;
    assert!(auth(password).await);
    assert!(
        !auth("old-redis-password".into()).await,
        "revoked after grace"
    );
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_rotator_is_told_each_step_signed_and_without_the_value() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let secret = "webhook-signing-secret-0123456789";
    s.put("prod/admin/hook", secret.as_bytes()).await;
    let ok = Endpoint::start(secret, None).await;
    let failing = Endpoint::start(secret, Some("test")).await;
    s.put("prod/ext/ok", b"old").await;
    s.put("prod/ext/failing", b"old").await;
    for (path, endpoint) in [("prod/ext/ok", &ok), ("prod/ext/failing", &failing)] {
        let mut p = policy(
            path,
            "webhook",
            json!({"url": endpoint.url.clone(), "signing_secret": "prod/admin/hook", "length": 24}),
        );
        p.max_attempts = 1;
        set_policy(&sched, &admin, p).await;
        rotate_now(&sched, &admin, path).await;
    }
    let client = sched.client(&admin);
    let r = wait_for(&client, "prod/ext/ok", Step::Cleanup).await;
    clock.advance(DAY + 1);
    wait_for(&client, "prod/ext/ok", Step::Completed).await;
    assert_eq!(ok.steps(), ["set", "test", "revoke"]);
    let (_, value) = current(&s, "prod/ext/ok").await;
    assert_eq!(value.len(), 24);
    let first = ok.seen.lock().unwrap()[0].clone();
    assert_eq!(first["secret_path"], "prod/ext/ok");
    assert_eq!(first["rotation_id"], r.id.as_str());
    assert_eq!(
        (
            first["pending_version"].as_u64(),
            first["previous_version"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let bodies = format!("{:?}", ok.seen.lock().unwrap());
    assert!(
        !bodies.contains(std::str::from_utf8(&value).unwrap()),
        "no value is sent"
    );

    let r = wait_for(&client, "prod/ext/failing", Step::Parked).await;
    assert_eq!(failing.steps(), ["set", "test", "restore"]);
    assert!(
        r.last_error.contains("webhook test answered 500"),
        "{}",
        r.last_error
    );
    assert_eq!(current(&s, "prod/ext/failing").await.0, 1);
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_signing_key_is_published_before_it_signs_and_old_tokens_verify_until_grace_ends() {
    use sentia_proto::keys::v1 as kpb;
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    // The scheduler's own identity at key-service: the shipped grants let it roll the token
    // key (get, stage, promote, retire) and nothing else.
    let scheduler_token = support::vault::keys::SCHEDULER_KEY_TOKEN;
    let sched = Scheduler::start_with(
        &s,
        &sqlite_url(),
        hooks(&clock),
        &[
            ("SENTIA_KEY_SERVICE_ADDR", s.keys.addr.as_str()),
            ("SENTIA_KEY_SERVICE_TOKEN", scheduler_token),
        ],
    )
    .await;
    // The root token is opaque (not a JWT), so it outlives the key it is rotating.
    let root = s.root_token.clone();
    let path = "prod/keys/jwt";
    s.put(path, br#"{"key":"sentia-jwt","version":1}"#).await;
    let mut p = policy(path, "jwt_signing_key", json!({"propagation": "1h"}));
    p.method = pb::RotationMethod::Rolling as i32;
    set_policy(&sched, &root, p).await;
    let (old_token, _) = s.login_as(&["developer"]).await;
    let whoami = |token: String| {
        let s = &s;
        async move {
            s.auth(&token)
                .await
                .who_am_i(vpb::WhoAmIRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    let mut keys = s
        .keys
        .client(Some(support::vault::keys::SCHEDULER_KEY_TOKEN))
        .await;
    let reader = keys.clone();
    let staged = || {
        let mut k = reader.clone();
        async move {
            k.get_key(kpb::GetKeyRequest {
                name: "sentia-jwt".into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };

    rotate_now(&sched, &root, path).await;
    let client = sched.client(&root);
    // Published first: v2 is staged and in the JWKS, v1 still signs, the rotation waits out
    // the propagation time at its test step.
    for _ in 0..200 {
        if staged().await.staged_version == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staged().await.staged_version, 2);
    let r = wait_for(&client, path, Step::Test).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_for(&client, path, Step::Test).await.id,
        r.id,
        "still waiting"
    );
    let published = keys
        .get_public_keys(kpb::GetPublicKeysRequest {
            key_name: "sentia-jwt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(published.keys.iter().any(|k| k.kid == "sentia-jwt-v2"));
    assert_eq!(s.keys.signing_kid("sentia-jwt").await, "sentia-jwt-v1");

    // After propagation (counted from the version's creation at key-service, on the real
    // clock: a minute of slack) it becomes the signer; tokens signed by v1 still verify.
    clock.advance(3_600_000 + 60_000);
    wait_for(&client, path, Step::Cleanup).await;
    assert_eq!(s.keys.signing_kid("sentia-jwt").await, "sentia-jwt-v2");
    let value: serde_json::Value = serde_json::from_slice(&current(&s, path).await.1).unwrap();
    assert_eq!(value["kid"], "sentia-jwt-v2");
    let (new_token, _) = s.login_as(&["developer"]).await;
    assert_eq!(whoami(new_token.clone()).await, Ok(()));
    assert_eq!(
        whoami(old_token.clone()).await,
        Ok(()),
        "v1 verifies during grace"
    );

    // After grace v1 is retired: tokens it signed are refused by vault-service.
    clock.advance(DAY + 1);
    wait_for(&client, path, Step::Completed).await;
    assert_eq!(staged().await.min_decryption_version, 2);
    let mut refused = Ok(());
    for _ in 0..100 {
        refused = whoami(old_token.clone()).await;
        if refused.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, Err(tonic::Code::Unauthenticated));
    assert_eq!(whoami(new_token).await, Ok(()));
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_rotation_without_key_service_says_what_to_configure() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let root = s.root_token.clone();
    s.put("prod/keys/jwt", br#"{"key":"sentia-jwt","version":1}"#)
        .await;
    let mut p = policy("prod/keys/jwt", "jwt_signing_key", json!({}));
    p.max_attempts = 1;
    set_policy(&sched, &root, p).await;
    rotate_now(&sched, &root, "prod/keys/jwt").await;
    let r = wait_for(&sched.client(&root), "prod/keys/jwt", Step::Parked).await;
    assert!(
        r.last_error.contains("SENTIA_KEY_SERVICE_ADDR"),
        "{}",
        r.last_error
    );
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_rotation_destroys_the_old_value_after_the_short_emergency_grace() {
    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    let root = s.root_token.clone();
    s.put("prod/app/leaked", b"old").await;
    set_policy(
        &sched,
        &root,
        policy("prod/app/leaked", "random", json!({})),
    )
    .await;
    let r = sched
        .client(&root)
        .rotate_now(pb::RotateNowRequest {
            path: "prod/app/leaked".into(),
            reason: "pasted in a public channel".into(),
            emergency: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.emergency);
    let client = sched.client(&root);
    wait_for(&client, "prod/app/leaked", Step::Cleanup).await;
    // The policy's grace is a day; an emergency waits SENTIA_EMERGENCY_GRACE (10 min).
    clock.advance(9 * 60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_for(&client, "prod/app/leaked", Step::Cleanup).await.id,
        r.id
    );
    clock.advance(60_001);
    wait_for(&client, "prod/app/leaked", Step::Completed).await;
    let d = describe(&s, "prod/app/leaked").await;
    assert_eq!(state_of(&d, 1), vpb::VersionState::Destroyed);
    sched.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_rollback_the_next_leader_restores_the_role_and_the_retry_succeeds() {
    let Some(pg_admin) = postgres_admin() else {
        return;
    };
    let Some(s) = stack(Backend::Postgres).await else {
        return;
    };
    let clock = clock();
    let db = vault::database(Backend::Postgres).await.unwrap();
    let (admin, _) = s.login_as(&["system_admin"]).await;
    let role = create_role(&pg_admin, "before").await;
    s.put("prod/admin/pg", pg_admin.as_bytes()).await;
    s.put("prod/db/app", &login(&role, "before")).await;
    let first = Scheduler::start(
        &s,
        &db,
        Hooks {
            fail: Some(Step::Test),
            crash_after: Some(Step::RolledBack),
            ..hooks(&clock)
        },
    )
    .await;
    set_postgres_policy(
        &first,
        &admin,
        "prod/db/app",
        "prod/admin/pg",
        &[role.as_str()],
    )
    .await;
    rotate_now(&first, &admin, "prod/db/app").await;
    assert_eq!(first.died().await, rotation_scheduler::Stopped::Crashed);

    let second = Scheduler::start(&s, &db, hooks(&clock)).await;
    clock.advance(6_000);
    let client = second.client(&admin);
    let r = wait_until(&client, "prod/db/app", "rolled back", |r| {
        r.step == Step::CreatePending as i32 && r.attempts == 1
    })
    .await;
    assert!(r.last_error.contains("test fails"), "{}", r.last_error);
    assert!(role_has_password(&pg_admin, &role, "before").await);
    // After the backoff the retry (no failure injected on this replica) completes.
    clock.advance(31_000);
    wait_for(&client, "prod/db/app", Step::Cleanup).await;
    clock.advance(DAY + 1);
    let done = wait_for(&client, "prod/db/app", Step::Completed).await;
    assert_eq!(done.id, r.id, "the same rotation, not a new one");
    let d = describe(&s, "prod/db/app").await;
    assert_eq!(state_of(&d, 1), vpb::VersionState::Destroyed);
    assert_eq!(
        state_of(&d, 2),
        vpb::VersionState::Destroyed,
        "the rolled-back PENDING"
    );
    let (version, value) = current(&s, "prod/db/app").await;
    assert_eq!(version, 3);
    let (_, password) = parse_login(&value);
    assert!(role_has_password(&pg_admin, &role, &password).await);
    second.stop().await;
    s.stop().await;
    drop_role(&pg_admin, &role).await;
}
