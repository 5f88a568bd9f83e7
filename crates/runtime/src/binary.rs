//! What every service binary does, once: read its config (bad config → a clear message and
//! exit code 64), set up telemetry, bind its listener (failure → 69), and run until a signal.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::{ConfigError, ProcessEnv, Shutdown, telemetry};

/// The body of a service's `main`.
pub async fn main<C, E, Fut>(
    name: &'static str,
    config: Result<C, ConfigError>,
    listen_addr: impl FnOnce(&C) -> SocketAddr,
    run: impl FnOnce(C, TcpListener, Shutdown) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(64);
        }
    };
    let _telemetry = match telemetry::init(name, &ProcessEnv) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(64);
        }
    };
    let addr = listen_addr(&config);
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{name}: cannot bind {addr}: {e}");
            return ExitCode::from(69);
        }
    };
    match run(config, listener, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} stopped");
            ExitCode::FAILURE
        }
    }
}
