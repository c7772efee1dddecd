//! Hrana 2/3 protocol structures in their JSON encoding (the spec's canonical one).
//!
//! Unknown fields are ignored, as the spec requires for forward compatibility; unknown request
//! or value types are refused when the body is parsed, with serde's message naming the type.

use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Deserialize)]
pub struct PipelineReqBody {
    #[serde(default)]
    pub baton: Option<String>,
    #[serde(default)]
    pub requests: Vec<StreamRequest>,
}

#[derive(Debug, Serialize)]
pub struct PipelineRespBody {
    pub baton: Option<String>,
    pub base_url: Option<String>,
    pub results: Vec<StreamResult>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: Error },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    Close,
    Execute {
        stmt: Stmt,
    },
    Batch {
        batch: Batch,
    },
    Sequence {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResponse {
    Close,
    Execute { result: StmtResult },
    Batch { result: BatchResult },
    Sequence,
    Describe { result: DescribeResult },
    StoreSql,
    CloseSql,
    GetAutocommit { is_autocommit: bool },
}

#[derive(Debug, Deserialize)]
pub struct CursorReqBody {
    #[serde(default)]
    pub baton: Option<String>,
    pub batch: Batch,
}

#[derive(Debug, Serialize)]
pub struct CursorRespBody {
    pub baton: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Error {
    pub message: String,
    pub code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stmt {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub sql_id: Option<i32>,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    #[serde(default)]
    pub want_rows: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedArg {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Serialize)]
pub struct StmtResult {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Value>>,
    pub affected_row_count: u64,
    #[serde(serialize_with = "int_as_string")]
    pub last_insert_rowid: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Col {
    pub name: Option<String>,
    pub decltype: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchStep {
    #[serde(default)]
    pub condition: Option<BatchCond>,
    pub stmt: Stmt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: u32 },
    Error { step: u32 },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
    Or { conds: Vec<BatchCond> },
    IsAutocommit,
}

#[derive(Debug, Serialize)]
pub struct BatchResult {
    pub step_results: Vec<Option<StmtResult>>,
    pub step_errors: Vec<Option<Error>>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CursorEntry {
    StepBegin {
        step: u32,
        cols: Vec<Col>,
    },
    StepEnd {
        affected_row_count: u64,
        #[serde(serialize_with = "int_as_string")]
        last_insert_rowid: Option<i64>,
    },
    StepError {
        step: u32,
        error: Error,
    },
    Row {
        row: Vec<Value>,
    },
    Error {
        error: Error,
    },
}

#[derive(Debug, Serialize)]
pub struct DescribeResult {
    pub params: Vec<DescribeParam>,
    pub cols: Vec<DescribeCol>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

#[derive(Debug, Serialize)]
pub struct DescribeParam {
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DescribeCol {
    pub name: String,
    pub decltype: Option<String>,
}

/// A SQLite value in Hrana's JSON form: integers as decimal strings (JSON numbers lose
/// precision past 2^53), blobs as base64.
#[derive(Debug, Clone, PartialEq)]
pub struct Value(pub tenantdb::Value);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        use tenantdb::Value as V;
        let mut map = s.serialize_map(Some(2))?;
        match &self.0 {
            V::Null => map.serialize_entry("type", "null")?,
            V::Integer(i) => {
                map.serialize_entry("type", "integer")?;
                map.serialize_entry("value", &i.to_string())?;
            }
            V::Real(f) => {
                map.serialize_entry("type", "float")?;
                map.serialize_entry("value", f)?;
            }
            V::Text(t) => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("value", t)?;
            }
            V::Blob(b) => {
                map.serialize_entry("type", "blob")?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
            }
        }
        map.end()
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RawValue {
    Null,
    Integer { value: IntegerText },
    Float { value: f64 },
    Text { value: String },
    Blob { base64: String },
}

/// Integers arrive as decimal strings; JSON numbers that are exact integers are accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntegerText {
    Text(String),
    Number(serde_json::Number),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use tenantdb::Value as V;
        Ok(Value(match RawValue::deserialize(d)? {
            RawValue::Null => V::Null,
            RawValue::Integer { value } => {
                let parsed = match &value {
                    IntegerText::Text(t) => t.trim().parse::<i64>().ok(),
                    IntegerText::Number(n) => n.as_i64(),
                };
                V::Integer(parsed.ok_or_else(|| {
                    de::Error::custom(
                        "an integer value must be a decimal string of a 64-bit integer",
                    )
                })?)
            }
            RawValue::Float { value } => V::Real(value),
            RawValue::Text { value } => V::Text(value),
            RawValue::Blob { base64 } => V::Blob(decode_base64(&base64).ok_or_else(|| {
                de::Error::custom("a blob value must be base64 (standard alphabet)")
            })?),
        }))
    }
}

/// Accepts padded and unpadded standard base64 (clients differ).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

fn int_as_string<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(i) => s.serialize_str(&i.to_string()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(json: &str) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn values_keep_their_encoding() {
        assert_eq!(roundtrip(r#"{"type":"null"}"#), r#"{"type":"null"}"#);
        assert_eq!(
            roundtrip(r#"{"type":"integer","value":"9223372036854775807"}"#),
            r#"{"type":"integer","value":"9223372036854775807"}"#
        );
        assert_eq!(
            roundtrip(r#"{"type":"integer","value":42}"#),
            r#"{"type":"integer","value":"42"}"#
        );
        assert_eq!(
            roundtrip(r#"{"type":"float","value":1.5}"#),
            r#"{"type":"float","value":1.5}"#
        );
        assert_eq!(
            roundtrip(r#"{"type":"blob","base64":"AAEC/w"}"#),
            r#"{"type":"blob","base64":"AAEC/w=="}"#
        );
    }

    #[test]
    fn wrong_encodings_are_refused() {
        for bad in [
            r#"{"type":"integer","value":"12x"}"#,
            r#"{"type":"integer","value":"99999999999999999999"}"#,
            r#"{"type":"integer","value":1.5}"#,
            r#"{"type":"blob","base64":"***"}"#,
            r#"{"type":"float","value":"1.5"}"#,
            r#"{"type":"bigint","value":"1"}"#,
            r#"{"value":"1"}"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_request_types_are_refused_with_their_name() {
        let err =
            serde_json::from_str::<PipelineReqBody>(r#"{"requests":[{"type":"frobnicate"}]}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("frobnicate"), "{err}");
    }
}
