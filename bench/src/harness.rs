//! The measuring loop shared by every suite: N connections x M requests in flight for a
//! fixed time after a 1 s warm-up; req/s and latency percentiles.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;

/// One measured row.
pub struct Figures {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
}

/// Prints the table header.
pub fn header() {
    println!(
        "{:<34} {:>10} {:>8} {:>9} {:>9}",
        "rpc", "req/s", "ratio", "p50 µs", "p99 µs"
    );
}

/// Prints one row as a ratio to `baseline`.
pub fn row(name: &str, f: &Figures, baseline: &Figures) {
    println!(
        "{:<34} {:>10.0} {:>7.2}x {:>9} {:>9}",
        name,
        f.rps,
        f.rps / baseline.rps,
        f.p50_us,
        f.p99_us
    );
}

/// Runs `call(connection index)` from every worker until the window ends; any error aborts.
pub async fn drive<F, Fut>(
    clients: usize,
    per_client: usize,
    seconds: u64,
    call: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let run = |window: Duration, record: bool| {
        let call = call.clone();
        async move {
            let deadline = Instant::now() + window;
            let mut tasks = Vec::new();
            for worker in 0..clients * per_client {
                let call = call.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        call(worker % clients).await?;
                        if record {
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Ok::<_, tonic::Status>(lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(
                    t.await
                        .context("worker panicked")?
                        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?,
                );
            }
            Ok::<_, anyhow::Error>(all)
        }
    };
    run(Duration::from_secs(1), false).await?;
    let started = Instant::now();
    let mut lat = run(Duration::from_secs(seconds), true).await?;
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(Figures {
        rps: lat.len() as f64 / elapsed,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
    })
}

/// The `q` quantile (0.5 = median) of `sorted` latencies; 0 when there are none.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}
