//! A tenantdb server running inside the benchmark process on loopback, and closed-loop load
//! from client threads against it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tenantdb::Fleet;
use tenantdb_server::ServerConfig;

use tenantdb_server::client::HttpClient;

pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the server on a free loopback port with tokio's default runtime (one worker per core).
pub fn start(fleet: Arc<Fleet>, mut config: ServerConfig) -> Result<RunningServer> {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .context("binding the server")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let served = runtime.block_on(tenantdb_server::serve(fleet, config, listener, async {
                let _ = stopped.await;
            }));
            if let Err(e) = served {
                eprintln!("server failed: {e}");
            }
        })
        .context("starting the server thread")?;
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl RunningServer {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a load phase measured.
pub struct Load {
    pub requests: usize,
    pub seconds: f64,
    /// Per-request latencies of each client group, in microseconds.
    pub latencies_us: Vec<Vec<f64>>,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn all_latencies(&self) -> Vec<f64> {
        self.latencies_us.iter().flatten().copied().collect()
    }
}

/// Runs `clients` closed-loop client threads for `seconds`; client `c` belongs to group
/// `group(c)` (for phases that mix kinds of traffic) and sends requests with `send(c, i,
/// http)`, which fails the phase on any unexpected answer.
pub fn load(
    addr: SocketAddr,
    clients: usize,
    seconds: f64,
    groups: usize,
    group: impl Fn(usize) -> usize + Sync,
    send: impl Fn(usize, usize, &mut HttpClient) -> Result<()> + Sync,
) -> Result<Load> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let per_client: Vec<Result<(usize, Vec<f64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let send = &send;
                scope.spawn(move || {
                    let mut http = HttpClient::new(addr);
                    let mut latencies = Vec::new();
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        send(c, i, &mut http)?;
                        latencies.push(t.elapsed().as_secs_f64() * 1e6);
                        i += 1;
                    }
                    Ok((c, latencies))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies_us = vec![Vec::new(); groups.max(1)];
    let mut requests = 0;
    for result in per_client {
        let (c, latencies) = result?;
        requests += latencies.len();
        latencies_us[group(c).min(groups.max(1) - 1)].extend(latencies);
    }
    Ok(Load {
        requests,
        seconds,
        latencies_us,
    })
}
