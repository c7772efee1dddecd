//! A report's rows as text: the JSON and CSV the CLI prints and the admin API sends, written
//! here once so both say the same thing.
//!
//! JSON: `{"columns":[…],"rows":[[…],…],"tenants_scanned":N,"tenants_skipped":[{tenant,reason}]}`
//! with plain values: numbers, strings, null, blobs as base64, and integers beyond 2^53 as
//! strings (so no JavaScript reader rounds them). CSV (RFC 4180): a header line, then one line
//! per row; NULL is an empty field, blobs are base64.

use base64::Engine as _;
use serde_json::json;

use super::SkippedTenant;
use crate::Value;

/// The largest integer every JSON reader holds exactly.
const JSON_SAFE_INTEGER: i64 = 1 << 53;

pub fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) if (-JSON_SAFE_INTEGER..=JSON_SAFE_INTEGER).contains(i) => json!(i),
        Value::Integer(i) => json!(i.to_string()),
        Value::Real(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Blob(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// The start of the JSON document, up to the opening of `rows`.
pub fn json_head(columns: &[String]) -> String {
    format!("{{\"columns\":{},\"rows\":[", json!(columns))
}

/// One row of the JSON document; `first` says whether a comma must precede it.
pub fn json_row(row: &[Value], first: bool) -> String {
    let values: Vec<serde_json::Value> = row.iter().map(json_value).collect();
    let sep = if first { "\n" } else { ",\n" };
    format!("{sep}{}", serde_json::Value::Array(values))
}

/// The end of the JSON document, after the last row.
pub fn json_tail(scanned: usize, skipped: &[SkippedTenant]) -> String {
    format!(
        "],\"tenants_scanned\":{scanned},\"tenants_skipped\":{}}}\n",
        json!(skipped)
    )
}

/// A value as a CSV field (before quoting).
pub fn csv_field(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => base64::engine::general_purpose::STANDARD.encode(b),
    }
}

/// One CSV line (with its CRLF), fields quoted when they hold a comma, a quote or a line break.
pub fn csv_line<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> String {
    let mut line = String::new();
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = field.as_ref();
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(field);
        }
    }
    line.push_str("\r\n");
    line
}

pub fn csv_row(row: &[Value]) -> String {
    csv_line(row.iter().map(csv_field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantId;

    #[test]
    fn json_holds_plain_values() {
        let row = [
            Value::Null,
            Value::Integer(1 << 53),
            Value::Integer((1 << 53) + 1),
            Value::Integer(i64::MIN),
            Value::Real(0.5),
            Value::Text("a\"b".into()),
            Value::Blob(vec![0, 1, 2]),
        ];
        let doc = format!(
            "{}{}{}",
            json_head(&["a".into(), "b".into()]),
            json_row(&row, true),
            json_tail(
                3,
                &[SkippedTenant {
                    tenant: TenantId::new("x").unwrap(),
                    reason: "not found".into(),
                }]
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            parsed,
            json!({
                "columns": ["a", "b"],
                "rows": [[null, 9007199254740992i64, "9007199254740993", "-9223372036854775808",
                          0.5, "a\"b", "AAEC"]],
                "tenants_scanned": 3,
                "tenants_skipped": [{"tenant": "x", "reason": "not found"}],
            })
        );
    }

    #[test]
    fn csv_quotes_what_it_must() {
        let row = [
            Value::Null,
            Value::Integer(-3),
            Value::Real(1.0),
            Value::Text("a,b".into()),
            Value::Text("say \"hi\"\nthere".into()),
            Value::Blob(vec![255]),
        ];
        assert_eq!(
            csv_row(&row),
            ",-3,1.0,\"a,b\",\"say \"\"hi\"\"\nthere\",/w==\r\n"
        );
    }
}
