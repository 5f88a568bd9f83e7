//! vault-service binary: config from the environment, telemetry, run until a signal.

use sentia_runtime::ProcessEnv;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sentia_runtime::binary::main(
        "vault-service",
        vault_service::Config::from_source(&ProcessEnv),
        |c| c.server.listen_addr,
        vault_service::run,
    )
    .await
}
