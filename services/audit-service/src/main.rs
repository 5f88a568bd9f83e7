//! audit-service binary: config from the environment, telemetry, run until a signal.

use sentia_runtime::ProcessEnv;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sentia_runtime::binary::main(
        "audit-service",
        audit_service::Config::from_source(&ProcessEnv),
        |c| c.server.listen_addr,
        audit_service::run,
    )
    .await
}
