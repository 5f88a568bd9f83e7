//! vault-service binary: reads config from the environment, sets up telemetry, runs.

use std::process::ExitCode;

use sentia_runtime::{ProcessEnv, Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match vault_service::Config::from_source(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vault-service: {e}");
            return ExitCode::from(64);
        }
    };
    let _telemetry = match telemetry::init("vault-service", &ProcessEnv) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("vault-service: {e}");
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.server.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "vault-service: cannot bind {}: {e}",
                config.server.listen_addr
            );
            return ExitCode::from(69);
        }
    };
    match vault_service::run(config, listener, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vault-service stopped");
            ExitCode::FAILURE
        }
    }
}
