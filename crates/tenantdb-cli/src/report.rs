//! `tenantdb report "SQL"`: one SELECT across every tenant (DESIGN section 8).
//!
//! Rows go to stdout as they are read: an aligned table (widths from the first rows), CSV or
//! JSON (the admin API's shape). The tally (tenants scanned, tenants skipped and why) goes to
//! stderr, so stdout stays pure data for CSV and JSON. A progress bar shows the gathering on a
//! terminal.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use tenantdb::report::{ReportOptions, ReportRequest, render};
use tenantdb::{Fleet, Report, TenantId, Value};

use crate::output::cell;
use crate::progress;

/// Rows read before the table's column widths are fixed.
const TABLE_WIDTH_SAMPLE: usize = 1000;
/// Skipped tenants listed one by one on stderr; beyond, only their number.
const SKIPPED_SHOWN: usize = 20;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// One SELECT, written as if every tenant's rows were in one database whose tables have an
    /// extra first column `_tenant` (the tenant id).
    pub sql: String,
    /// A SELECT over the report's result, which it reads as the table `result`.
    #[arg(long)]
    pub reduce: Option<String>,
    /// Only these tenants (comma-separated or repeated). Unknown ones are listed as skipped.
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Only tenants created at or after this time: unix seconds, 2024-05-01 or
    /// 2024-05-01T12:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,
    /// Only tenants created before this time (same forms).
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,
    /// Output format (default: table, or json with --json).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Threads reading tenants (default: one per core). Fewer leave more of the machine to a
    /// server running beside the report.
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub fn run(fleet: &Fleet, args: ReportArgs, json: bool, actor: &str) -> Result<ExitCode> {
    let format = args
        .format
        .unwrap_or(if json { Format::Json } else { Format::Table });
    let tenants = if args.tenants.is_empty() {
        None
    } else {
        Some(
            args.tenants
                .iter()
                .map(|raw| TenantId::new(raw.as_str()).map_err(anyhow::Error::from))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let request = ReportRequest {
        sql: args.sql,
        reduce: args.reduce,
        tenants,
        created_after: args
            .created_after
            .as_deref()
            .map(|t| parse_time(t).context("--created-after"))
            .transpose()?,
        created_before: args
            .created_before
            .as_deref()
            .map(|t| parse_time(t).context("--created-before"))
            .transpose()?,
    };
    let mut options = ReportOptions::default();
    if let Some(jobs) = args.jobs {
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        options.jobs = jobs;
    }
    let bar = progress::Bar::new("reading tenants");
    let mut report = fleet.report_with(&request, &options, &bar, actor)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let rows = match format {
        Format::Table => table(&mut out, &mut report)?,
        Format::Csv => csv(&mut out, &mut report)?,
        Format::Json => json_doc(&mut out, &mut report)?,
    };
    out.flush().context("writing the report")?;
    drop(out);
    tally(&report, rows);
    Ok(ExitCode::SUCCESS)
}

fn next_row(report: &mut Report) -> Result<Option<Vec<Value>>> {
    report.rows.next().transpose().context("the report stopped")
}

fn table(out: &mut impl Write, report: &mut Report) -> Result<u64> {
    let mut sample = Vec::new();
    while sample.len() < TABLE_WIDTH_SAMPLE {
        match next_row(report)? {
            Some(row) => sample.push(row.iter().map(cell).collect::<Vec<String>>()),
            None => break,
        }
    }
    let mut widths: Vec<usize> = report.columns.iter().map(|c| c.chars().count()).collect();
    for row in &sample {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> Result<()> {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", padded.join("  ").trim_end()).context("writing the report")
    };
    line(out, &report.columns)?;
    let mut rows = 0;
    for row in &sample {
        line(out, row)?;
        rows += 1;
    }
    while let Some(row) = next_row(report)? {
        line(out, &row.iter().map(cell).collect::<Vec<_>>())?;
        rows += 1;
    }
    Ok(rows)
}

fn csv(out: &mut impl Write, report: &mut Report) -> Result<u64> {
    out.write_all(render::csv_line(&report.columns).as_bytes())
        .context("writing the report")?;
    let mut rows = 0;
    while let Some(row) = next_row(report)? {
        out.write_all(render::csv_row(&row).as_bytes())
            .context("writing the report")?;
        rows += 1;
    }
    Ok(rows)
}

fn json_doc(out: &mut impl Write, report: &mut Report) -> Result<u64> {
    out.write_all(render::json_head(&report.columns).as_bytes())
        .context("writing the report")?;
    let mut rows = 0;
    while let Some(row) = next_row(report)? {
        out.write_all(render::json_row(&row, rows == 0).as_bytes())
            .context("writing the report")?;
        rows += 1;
    }
    out.write_all(render::json_tail(report.tenants_scanned, &report.tenants_skipped).as_bytes())
        .context("writing the report")?;
    Ok(rows)
}

/// Rows and tenants, on stderr.
fn tally(report: &Report, rows: u64) {
    let skipped = &report.tenants_skipped;
    eprintln!(
        "{rows} row{} from {} tenant{}; {} skipped",
        if rows == 1 { "" } else { "s" },
        report.tenants_scanned,
        if report.tenants_scanned == 1 { "" } else { "s" },
        skipped.len()
    );
    for s in skipped.iter().take(SKIPPED_SHOWN) {
        eprintln!("  skipped {}: {}", s.tenant, s.reason);
    }
    if skipped.len() > SKIPPED_SHOWN {
        eprintln!("  … and {} more", skipped.len() - SKIPPED_SHOWN);
    }
}

/// Unix seconds, or an RFC 3339 date or UTC date-time.
fn parse_time(raw: &str) -> Result<i64> {
    let raw = raw.trim();
    if let Ok(unix) = raw.parse::<i64>() {
        return Ok(unix);
    }
    let (date, time) = match raw.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').unwrap_or(t))),
        None => (raw, None),
    };
    let number = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let parts: Vec<&str> = date.split('-').collect();
    let (Some(y), Some(m), Some(d)) = (
        parts.first().and_then(|s| number(s)),
        parts.get(1).and_then(|s| number(s)),
        parts.get(2).and_then(|s| number(s)),
    ) else {
        bail!("{raw:?} is not a time: give unix seconds, 2024-05-01 or 2024-05-01T12:00:00Z");
    };
    if parts.len() != 3
        || !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        bail!("{raw:?} is not a date: give unix seconds, 2024-05-01 or 2024-05-01T12:00:00Z");
    }
    let mut seconds = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let hms: Vec<Option<i64>> = time.split(':').map(number).collect();
        match hms.as_slice() {
            [Some(h), Some(min), Some(s)] if *h < 24 && *min < 60 && *s < 61 => {
                seconds += h * 3600 + min * 60 + s;
            }
            [Some(h), Some(min)] if *h < 24 && *min < 60 => seconds += h * 3600 + min * 60,
            _ => bail!("{raw:?} has no valid time of day; use HH:MM:SS in UTC, ending in Z"),
        }
    }
    Ok(seconds)
}

/// Howard Hinnant's civil-to-days algorithm (the inverse of `tenantdb::time`'s).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_unix_seconds_or_utc_dates() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("1970-01-01").unwrap(), 0);
        assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400);
        assert_eq!(parse_time("2026-11-18T11:06:40Z").unwrap(), 1_795_000_000);
        assert_eq!(parse_time("2026-11-18T11:06").unwrap(), 1_794_999_960);
        for bad in [
            "yesterday",
            "2024-13-01",
            "2024-01-01T25:00:00Z",
            "",
            "2024-01",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for unix in [0, 951_782_400, 1_795_000_000, -86_400] {
            let shown = tenantdb::time::format_utc(unix);
            assert_eq!(parse_time(&shown).unwrap(), unix, "{shown}");
        }
    }
}
