//! Every RPC of every service leaves its outcome in the audit log, whatever the outcome:
//! the methods are read from the services' own descriptors (a new RPC is covered the day it
//! is added), each is called with an empty request — once with no credential (refused by
//! the authentication layer) and once as an identity that may not do it (refused or turned
//! away as bad input by the handler) — and each call's request id must come back in the
//! log. The one exception is key-service's Status, the public readiness probe. The services
//! run as deployed: on Postgres, with Redis.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use sentia_testkit::{Backend, Sandbox, keys};

/// Methods that are not recorded, by design.
const UNAUDITED: &[&str] = &["/sentia.keys.v1.SystemService/Status"];

/// The event the authentication layer records for a call it turns away.
const LAYER_EVENT: &str = "auth_decision";

/// One gRPC method, as its descriptor says.
struct Method {
    service: String,
    path: String,
    streaming: bool,
}

fn methods() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(sentia_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for m in &service.method {
                let full = format!("{}.{}", file.package(), service.name());
                out.push(Method {
                    service: full.clone(),
                    path: format!("/{full}/{}", m.name()),
                    streaming: m.server_streaming(),
                });
            }
        }
    }
    out
}

/// Calls `method` with an empty request and `request_id`; the status it ended with.
async fn call(channel: AuthedChannel, method: &Method, request_id: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    let path = http::uri::PathAndQuery::try_from(method.path.as_str()).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let result = if method.streaming {
        match grpc.server_streaming(req, path, codec).await {
            Ok(mut stream) => {
                tokio::time::timeout(Duration::from_millis(200), stream.get_mut().message())
                    .await
                    .map_or(Ok(()), |m| m.map(|_| ()))
            }
            Err(e) => Err(e),
        }
    } else {
        grpc.unary(req, path, codec).await.map(|_| ())
    };
    result.err().map_or(tonic::Code::Ok, |s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_records_its_outcome_including_refusals() {
    let Some(sandbox) = Sandbox::builder()
        .backend(Backend::Postgres)
        .redis()
        .audit()
        .scheduler(Default::default())
        .start()
        .await
    else {
        return;
    };
    let vault = sandbox.vault();
    let (developer, _) = vault.login_as(&["developer"]).await;
    let all = [
        ("keys", sandbox.keys().addr.clone()),
        ("vault", vault.addr.clone()),
        ("audit", sandbox.audit().addr.clone()),
        ("rotation", sandbox.scheduler().addr.clone()),
    ];
    // Where a contract is served: its own service, or (backup snapshots) every service.
    let served_at = |service: &str| -> Vec<(&'static str, String)> {
        let package = service.split('.').nth(1).unwrap_or_default();
        let at: Vec<_> = all
            .iter()
            .filter(|(name, _)| package == "backup" || *name == package)
            .cloned()
            .collect();
        assert!(
            !at.is_empty(),
            "a service the sandbox does not run: {service}"
        );
        at
    };
    // key-service takes service identities only; vault-service's has no admin role there.
    let unprivileged = |at: &str| match at {
        "keys" => keys::SERVICE_TOKEN.to_string(),
        _ => developer.clone(),
    };

    let methods = methods();
    assert!(
        methods.len() > 40,
        "the descriptors list every service's methods"
    );
    // request id -> (method, whether the handler itself must have recorded it, status)
    let mut calls = BTreeMap::new();
    let audited = methods
        .iter()
        .filter(|m| !UNAUDITED.contains(&m.path.as_str()));
    for (m, (at, addr)) in
        audited.flat_map(|m| served_at(&m.service).into_iter().map(move |a| (m, a)))
    {
        let channel = connect_lazy(&addr, None).unwrap();
        for token in [None, Some(unprivileged(at))] {
            // RevokeToken with no token id revokes the caller's own: give it a token to lose.
            let token = match token {
                Some(_) if m.path.ends_with("/RevokeToken") => {
                    Some(vault.login_as(&["developer"]).await.0)
                }
                other => other,
            };
            let id = sentia_testkit::unique("rpc");
            let ctx = CallContext::with_token(token.as_deref()).unwrap();
            let code = call(ctx.wrap(channel.clone()), m, &id).await;
            calls.insert(id, (format!("{} at {at}", m.path), token.is_some(), code));
        }
    }

    // Each event is stored before its caller is answered; the wait covers an emitter that
    // spooled through a hiccup and replays in the background.
    let audit = sandbox.audit();
    let mut missing = Vec::new();
    for _ in 0..100 {
        let events = audit.events().await;
        missing = calls
            .iter()
            .filter(|(id, (_, by_handler, _))| {
                !events
                    .iter()
                    .any(|e| &e.request_id == *id && (!*by_handler || e.event_type != LAYER_EVENT))
            })
            .map(|(_, (path, by_handler, code))| {
                let who = if *by_handler {
                    "as an unprivileged caller"
                } else {
                    "without a credential"
                };
                format!("{path} {who} ({code:?})")
            })
            .collect::<Vec<_>>();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "no audit record of: {missing:#?}");
    // The calls were refused, not served: none of them changed anything.
    let served: Vec<_> = calls
        .values()
        .filter(|(_, by_handler, code)| !*by_handler && *code == tonic::Code::Ok)
        .map(|(path, _, _)| path)
        .collect();
    assert_eq!(
        served,
        ["/sentia.keys.v1.SystemService/Unseal at keys"],
        "only the public unseal answers without a credential (the service is unsealed)"
    );
    sandbox.stop().await;
}
