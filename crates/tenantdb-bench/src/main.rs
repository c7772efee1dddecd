//! `tenantdb-bench`: measures the tenantdb library against the naive way of doing the same
//! work, both in the same run on the same machine (DESIGN.md section 12).
//!
//! Each scenario lives in its own module and returns a [`Report`]: the parameters it ran with
//! and its figures (medians where a measurement is repeated), printed for people or, with
//! `--json`, as exactly one JSON object. Benchmarks never fail on a number; they fail only when
//! the work itself fails.

mod harness;
mod import;
mod inproc;
mod migrate;
mod open;
mod provision;
mod report;
mod serve;
mod webhook;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use harness::{Report, Workdir};

#[derive(Debug, Parser)]
#[command(
    name = "tenantdb-bench",
    version,
    about = "Benchmarks for tenantdb, each with a baseline measured in the same run"
)]
struct Cli {
    /// What to measure.
    scenario: Scenario,
    /// Number of tenants (default: provision 2000, open 1000, migrate 10000, serve 1000,
    /// webhook 2000, import 10000).
    #[arg(long)]
    tenants: Option<usize>,
    /// Rows per tenant in the `todos` table (default 20; import: rows in the whole shared
    /// database, default 1,000,000).
    #[arg(long)]
    rows: Option<usize>,
    /// Client threads issuing the measured work (default: provision 4, serve 32, webhook 16,
    /// migrate the library's default number of migration jobs).
    #[arg(long)]
    clients: Option<usize>,
    /// How long each timed loop runs, for scenarios that loop (open's warm queries, each phase
    /// of serve, at least 1 s there).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print exactly one JSON object for the run instead of text.
    #[arg(long)]
    json: bool,
    /// Where to put the databases (must be empty or absent; kept afterwards). Default: a
    /// temporary directory, removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// Creating tenants through `Fleet::create_tenant` against running the schema per database.
    Provision,
    /// Cold and warm access to tenants through the connection cache; peak memory.
    Open,
    /// Rolling two migrations out to every tenant against one shared database.
    Migrate,
    /// Hrana point reads and writes from concurrent clients against the server's /health.
    Serve,
    /// Signed signup webhooks per second against provisioning through the library.
    Webhook,
    /// Reports across tenants (count, per tenant, top-k, join) against one shared database.
    Report,
    /// Splitting a shared database into tenants and verifying them, against copying the file.
    Import,
}

/// What every scenario gets from the command line, with its own defaults applied.
pub struct Params {
    pub tenants: usize,
    pub rows: usize,
    pub clients: Option<usize>,
    pub seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.rows != Some(0), "--rows must be at least 1");
    anyhow::ensure!(
        cli.seconds.is_finite() && cli.seconds > 0.0,
        "--seconds must be a positive number"
    );
    anyhow::ensure!(cli.clients != Some(0), "--clients must be at least 1");
    let workdir = Workdir::new(cli.data_dir.as_deref())?;
    let default_tenants = match cli.scenario {
        Scenario::Provision => provision::DEFAULT_TENANTS,
        Scenario::Open => open::DEFAULT_TENANTS,
        Scenario::Migrate => migrate::DEFAULT_TENANTS,
        Scenario::Serve => serve::DEFAULT_TENANTS,
        Scenario::Webhook => webhook::DEFAULT_TENANTS,
        Scenario::Report => report::DEFAULT_TENANTS,
        Scenario::Import => import::DEFAULT_TENANTS,
    };
    let params = Params {
        tenants: cli.tenants.unwrap_or(default_tenants),
        rows: cli.rows.unwrap_or(match cli.scenario {
            Scenario::Import => import::DEFAULT_ROWS,
            _ => 20,
        }),
        clients: cli.clients,
        seconds: cli.seconds,
    };
    anyhow::ensure!(params.tenants >= 1, "--tenants must be at least 1");
    let report: Report = match cli.scenario {
        Scenario::Provision => provision::run(&workdir, &params)?,
        Scenario::Open => open::run(&workdir, &params)?,
        Scenario::Migrate => migrate::run(&workdir, &params)?,
        Scenario::Serve => serve::run(&workdir, &params)?,
        Scenario::Webhook => webhook::run(&workdir, &params)?,
        Scenario::Report => report::run(&workdir, &params)?,
        Scenario::Import => import::run(&workdir, &params)?,
    };
    if cli.json {
        println!("{}", report.json_line()?);
    } else {
        print!("{}", report.text());
    }
    workdir.finish()
}
