//! key-service binary: reads config from the environment, sets up telemetry, runs.

use std::process::ExitCode;

use sentia_runtime::{ProcessEnv, Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match key_service::Config::from_source(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("key-service: {e}");
            return ExitCode::from(64);
        }
    };
    let _telemetry = match telemetry::init("key-service", &ProcessEnv) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("key-service: {e}");
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.server.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "key-service: cannot bind {}: {e}",
                config.server.listen_addr
            );
            return ExitCode::from(69);
        }
    };
    match key_service::run(config, listener, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "key-service stopped");
            ExitCode::FAILURE
        }
    }
}
