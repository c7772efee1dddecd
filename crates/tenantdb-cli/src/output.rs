//! Rendering for people (aligned tables) and for programs (JSON).

use base64::Engine;
use serde_json::{Value as Json, json};
use tenantdb::Value;

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A SQLite value as a table cell.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!("x'{}'", hex(b)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SQLite value as plain JSON: integers beyond 2^53 become strings so no reader rounds them,
/// blobs become base64.
pub fn json_value(value: &Value) -> Json {
    const SAFE: i64 = 1 << 53;
    match value {
        Value::Null => Json::Null,
        Value::Integer(i) if (-SAFE..=SAFE).contains(i) => json!(i),
        Value::Integer(i) => json!(i.to_string()),
        Value::Real(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Blob(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

pub fn time(unix: Option<i64>) -> String {
    unix.map(tenantdb::time::format_utc).unwrap_or_default()
}
