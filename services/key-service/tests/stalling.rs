//! Bounded cost per caller: a principal that opens requests and never sends their bodies
//! gets its own few slots and then RESOURCE_EXHAUSTED, its stalled requests end at the body
//! deadline, and another principal is served throughout.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use sentia_proto::keys::v1::GetPublicKeysRequest;
use support::Running;

/// Opens a GetPublicKeys request with `token` on `h2` and never sends its body; the task
/// yields the grpc-status the server answers with.
async fn stall(
    h2: &h2::client::SendRequest<bytes::Bytes>,
    addr: &str,
    token: &str,
    into: &mut tokio::task::JoinSet<String>,
) {
    let req = http::Request::post(format!(
        "http://{addr}/sentia.keys.v1.KeyService/GetPublicKeys"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", format!("Bearer {token}"))
    .body(())
    .unwrap();
    let mut ready = h2.clone().ready().await.unwrap();
    let (response, body) = ready.send_request(req, false).unwrap();
    into.spawn(async move {
        let _never_sent = body;
        let r = response.await.unwrap();
        let status = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string())
        };
        if let Some(s) = status(r.headers()) {
            return s;
        }
        let mut body = r.into_body();
        while body.data().await.is_some() {}
        status(&body.trailers().await.unwrap().unwrap_or_default()).unwrap_or_default()
    });
}

async fn next(set: &mut tokio::task::JoinSet<String>) -> String {
    // A bound only against hanging forever; every answer is expected well before it.
    tokio::time::timeout(std::time::Duration::from_secs(60), set.join_next())
        .await
        .expect("no answer")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_stalling_request_bodies_does_not_stop_another_principals_calls() {
    let keys = Running::start(
        &support::sqlite_url(),
        &[
            ("SENTIA_CONCURRENCY_LIMIT", "8"),
            ("SENTIA_PRINCIPAL_CONCURRENCY", "4"),
            ("SENTIA_SERVICE_CONCURRENCY", "4"),
            ("SENTIA_BODY_TIMEOUT", "5s"),
        ],
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(&keys.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..20 {
        stall(&h2, &keys.addr, support::CRYPTO_TOKEN, &mut stalled).await;
    }
    // Beyond its 4 slots the staller is refused at once (RESOURCE_EXHAUSTED = 8); the 4
    // slot holders answer only at the body deadline.
    for _ in 0..16 {
        assert_eq!(next(&mut stalled).await, "8");
    }

    // Meanwhile another principal is served, more calls at once than the global limit.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut admin = keys.client(Some(support::ADMIN_TOKEN)).await;
        calls.spawn(async move {
            admin
                .get_public_keys(GetPublicKeysRequest {
                    key_name: "sentia-jwt".into(),
                })
                .await
                .map(|_| ())
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        stalled.len(),
        4,
        "the other principal was served while the staller's requests were still open"
    );
    assert!(stalled.try_join_next().is_none());

    // The stalled requests end at the body deadline (DEADLINE_EXCEEDED = 4), which frees
    // the staller's slots.
    for _ in 0..4 {
        assert_eq!(next(&mut stalled).await, "4");
    }
    keys.client(Some(support::CRYPTO_TOKEN))
        .await
        .get_public_keys(GetPublicKeysRequest {
            key_name: "sentia-jwt".into(),
        })
        .await
        .unwrap();
    keys.stop().await;
}
