//! Plumbing shared by the CLI's integration tests: a real `tenantdb serve` ([`ServeProcess`])
//! and the code blocks of the guides they run ([`markdown`]).

#![allow(dead_code)]

pub mod markdown;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tenantdb");

/// A running `tenantdb --data-dir <dir> serve --listen 127.0.0.1:0 <extra_args>`, killed when
/// dropped (also when a test panics).
pub struct ServeProcess {
    child: Child,
    /// `host:port` the server listens on.
    pub addr: String,
    /// Everything the server has written to stderr so far.
    pub log: Arc<Mutex<String>>,
}

/// The `tenantdb` binary, blind to every `TENANTDB_*` setting of the environment the tests run
/// in: each test gives only its own.
pub fn bare_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TENANTDB_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `tenantdb --data-dir <data> …`, from [`bare_command`].
pub fn tenantdb(data: &Path) -> Command {
    let mut cmd = bare_command();
    cmd.arg("--data-dir").arg(data);
    cmd
}

/// Asserts that a `tenantdb` run succeeded and returns what it printed.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "tenantdb failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

impl ServeProcess {
    /// Starts the server with no `TENANTDB_*` setting from the environment the test runs in,
    /// only `envs` (and `RUST_LOG=warn`), and waits (up to 60s) for its address.
    pub fn start(data_dir: &Path, extra_args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut cmd = tenantdb(data_dir);
        for (name, value) in envs {
            cmd.env(name, value);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tenantdb serve starts");

        // Keep reading stderr for the server's whole life (a full pipe would block it), and
        // hand over the address from its `tenantdb serving <dir> on http://<addr>` line.
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("tenantdb serving ")
                    && let Some((_, addr)) = rest.rsplit_once(" on http://")
                {
                    let _ = tx.send(addr.to_string());
                }
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => ServeProcess { child, addr, log },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tenantdb serve did not print its address ({}); stderr:\n{}",
                    match e {
                        mpsc::RecvTimeoutError::Timeout => "not within 60s",
                        mpsc::RecvTimeoutError::Disconnected => "it exited",
                    },
                    log.lock().unwrap()
                );
            }
        }
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no graceful shutdown, no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion within `limit`, capturing its output; kills it past the limit.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?} did not start: {e}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{cmd:?} did not finish within {limit:?}; its output so far:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}
