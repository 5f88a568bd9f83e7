//! rotation-scheduler binary: config from the environment, telemetry, run until a signal.

use sentia_runtime::ProcessEnv;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sentia_runtime::binary::main(
        "rotation-scheduler",
        rotation_scheduler::Config::from_source(&ProcessEnv),
        |c| c.server.listen_addr,
        |config, listener, shutdown| async move {
            rotation_scheduler::run(config, listener, shutdown)
                .await
                .map(|_| ())
        },
    )
    .await
}
