//! Graceful shutdown: the first SIGINT/SIGTERM cancels a token that every server and task
//! watches; a second signal exits at once.

use tokio_util::sync::CancellationToken;

/// A cloneable handle that says when to stop. Tests and `sentia dev` create one directly
/// and cancel it; binaries use [`Shutdown::on_signals`].
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A token that only cancels when asked.
    pub fn new() -> Self {
        Self(CancellationToken::new())
    }

    /// A token cancelled by the first SIGINT or SIGTERM; the second one exits the process with
    /// status 130 without waiting for in-flight work.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining in-flight requests");
            token.trigger();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal; exiting now");
            std::process::exit(130);
        });
        shutdown
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// True once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Resolves when shutdown starts, owning its handle: for a task or a library that takes
    /// any future as its stop signal.
    pub fn stopped(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.0.cancelled_owned()
    }

    /// A child token: cancelled with this one, or on its own.
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
