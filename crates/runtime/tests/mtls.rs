//! The shared server stack over real sockets: mutual TLS accepts only certificates from its
//! CA, and every response carries a request id.

#![allow(clippy::unwrap_used)]
use sentia_dev_pki::DevPki;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::connect;
use sentia_runtime::tls::TlsClientConfig;
use sentia_runtime::{Server, ServerConfig, Shutdown};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn start(config: ServerConfig) -> (String, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move {
        Server::new(config)
            .serve(Routes::default(), listener, stop)
            .await
            .unwrap();
    });
    (addr, shutdown, handle)
}

async fn health_check(addr: &str, tls: Option<&TlsClientConfig>) -> Result<i32, String> {
    let channel = connect(addr, tls).await.map_err(|e| e.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().status)
}

fn mtls_config(pki: &DevPki) -> ServerConfig {
    let mut config = ServerConfig::dev("test-server", TokenTable::default());
    config.tls = Some(pki.server_config("test-server", true).unwrap());
    config
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_servers_ca_is_served() {
    let pki = DevPki::generate().unwrap();
    let (addr, shutdown, handle) = start(mtls_config(&pki)).await;
    let client = pki.client_config(Some("vault-service")).unwrap();
    assert_eq!(
        health_check(&addr, Some(&client)).await,
        Ok(1),
        "SERVING is 1"
    );
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = DevPki::generate().unwrap();
    let (addr, shutdown, handle) = start(mtls_config(&pki)).await;
    let client = pki.client_config(None).unwrap();
    assert!(health_check(&addr, Some(&client)).await.is_err());
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = DevPki::generate().unwrap();
    let stranger = DevPki::generate().unwrap();
    let (addr, shutdown, handle) = start(mtls_config(&pki)).await;
    let mut client = stranger.client_config(Some("vault-service")).unwrap();
    // Trust the real server, but present a certificate the server's CA never signed.
    client.ca_pem = pki.ca_pem();
    assert!(health_check(&addr, Some(&client)).await.is_err());
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_plaintext_client_cannot_talk_to_a_tls_server() {
    let pki = DevPki::generate().unwrap();
    let (addr, shutdown, handle) = start(mtls_config(&pki)).await;
    assert!(health_check(&addr, None).await.is_err());
    shutdown.trigger();
    handle.await.unwrap();
}

#[tokio::test]
async fn every_response_carries_the_callers_request_id_or_a_new_one() {
    let (addr, shutdown, handle) =
        start(ServerConfig::dev("test-server", TokenTable::default())).await;
    let channel = connect(&addr, None).await.unwrap();
    let mut client = HealthClient::new(channel);

    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-123".parse().unwrap());
    let response = client.check(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-123");

    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let minted = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid_like(minted), "{minted}");
    shutdown.trigger();
    handle.await.unwrap();
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
