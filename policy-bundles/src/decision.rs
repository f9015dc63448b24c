//! The decision contract: a route's rule yields `true`/`false` or an object with `allow`,
//! `status`, `headers`, `response_headers` and `reason`.

use regorus::Value;

/// What the gateway does with a request once its rule has answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allow: bool,
    /// Status of a deny; 403 unless the rule says otherwise.
    pub status: u16,
    /// Added to the request sent upstream (allow only).
    pub headers: Vec<(String, String)>,
    /// Added to the response sent to the client (allow or deny).
    pub response_headers: Vec<(String, String)>,
    pub reason: Option<String>,
}

/// Why a rule's answer could not be turned into a decision; the request is denied (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("the rule is undefined for this input")]
    Undefined,
    #[error("the rule's result is not a decision: {0}")]
    Shape(String),
}

impl Decision {
    pub fn deny(status: u16, reason: impl Into<String>) -> Decision {
        Decision { allow: false, status, reason: Some(reason.into()), ..Decision::default() }
    }

    pub fn from_value(v: &Value) -> Result<Decision, DecisionError> {
        match v {
            Value::Undefined => Err(DecisionError::Undefined),
            Value::Bool(b) => Ok(Decision { allow: *b, status: 403, ..Decision::default() }),
            Value::Object(obj) => {
                let mut d = Decision { status: 403, ..Decision::default() };
                for (k, val) in obj.iter() {
                    let key = k.as_string().map_err(|_| DecisionError::Shape("non-string key".into()))?;
                    match key.as_ref() {
                        "allow" => {
                            d.allow =
                                *val.as_bool().map_err(|_| DecisionError::Shape("`allow` must be a boolean".into()))?
                        }
                        "status" => {
                            let s =
                                val.as_u16().map_err(|_| DecisionError::Shape("`status` must be a number".into()))?;
                            d.status = s;
                        }
                        "reason" => d.reason = Some(string_of(val, "reason")?),
                        "headers" => d.headers = headers_of(val, "headers")?,
                        "response_headers" => d.response_headers = headers_of(val, "response_headers")?,
                        _ => {}
                    }
                }
                if !d.allow && !(300..=599).contains(&d.status) {
                    return Err(DecisionError::Shape(format!("`status` {} is not a deny status (300-599)", d.status)));
                }
                if !d.allow
                    && (300..400).contains(&d.status)
                    && !d.response_headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("location"))
                {
                    return Err(DecisionError::Shape(format!(
                        "`status` {} is a redirect without a `location` in `response_headers`",
                        d.status
                    )));
                }
                Ok(d)
            }
            other => Err(DecisionError::Shape(format!("expected a boolean or an object, got {other}"))),
        }
    }
}

fn string_of(v: &Value, what: &str) -> Result<String, DecisionError> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
        _ => Err(DecisionError::Shape(format!("`{what}` must be a string"))),
    }
}

fn headers_of(v: &Value, what: &str) -> Result<Vec<(String, String)>, DecisionError> {
    let obj = v.as_object().map_err(|_| DecisionError::Shape(format!("`{what}` must be an object")))?;
    let mut out = Vec::with_capacity(obj.len());
    for (k, val) in obj.iter() {
        let name = k.as_string().map_err(|_| DecisionError::Shape(format!("`{what}` keys must be strings")))?;
        let value = string_of(val, what)?;
        if !valid_header_name(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(DecisionError::Shape(format!("`{what}` has an invalid header `{name}`")));
        }
        if is_framing_or_hop_by_hop(name) {
            return Err(DecisionError::Shape(format!(
                "`{what}` may not set `{name}`: it is a hop-by-hop or framing header"
            )));
        }
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// Headers a decision may never set: they change how the message is framed or routed, not
/// what it says (a decision's `content-length` would desynchronize the upstream connection).
pub const FORBIDDEN_DECISION_HEADERS: &[&str] =
    &["connection", "content-length", "transfer-encoding", "te", "trailer", "upgrade", "host", "keep-alive"];

/// Whether a decision may not set this header: [`FORBIDDEN_DECISION_HEADERS`] and `proxy-*`.
pub fn is_framing_or_hop_by_hop(name: &str) -> bool {
    FORBIDDEN_DECISION_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

pub(crate) fn valid_header_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_booleans_and_objects() {
        assert!(Decision::from_value(&Value::from(true)).unwrap().allow);
        let v = Value::from_json_str(
            r#"{"allow": false, "status": 429, "reason": "slow down", "headers": {"x-user": "a"}}"#,
        )
        .unwrap();
        let d = Decision::from_value(&v).unwrap();
        assert!(!d.allow);
        assert_eq!(d.status, 429);
        assert_eq!(d.reason.as_deref(), Some("slow down"));
        assert_eq!(d.headers, vec![("x-user".to_string(), "a".to_string())]);
    }

    #[test]
    fn refuses_undefined_and_bad_shapes() {
        assert_eq!(Decision::from_value(&Value::Undefined), Err(DecisionError::Undefined));
        assert!(Decision::from_value(&Value::from("yes")).is_err());
        let v = Value::from_json_str(r#"{"allow": true, "headers": {"bad header": "x"}}"#).unwrap();
        assert!(Decision::from_value(&v).is_err());
        let v = Value::from_json_str(r#"{"allow": true, "headers": {"x": "a\r\nb"}}"#).unwrap();
        assert!(Decision::from_value(&v).is_err());
    }

    #[test]
    fn a_decision_cannot_set_framing_or_hop_by_hop_headers() {
        for name in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "host",
            "te",
            "upgrade",
            "proxy-authorization",
            "keep-alive",
            "trailer",
        ] {
            for field in ["headers", "response_headers"] {
                let v = Value::from_json_str(&format!(r#"{{"allow": true, "{field}": {{"{name}": "1"}}}}"#)).unwrap();
                let e = Decision::from_value(&v).unwrap_err().to_string();
                assert!(e.contains("hop-by-hop or framing"), "{field} {name}: {e}");
            }
        }
    }

    #[test]
    fn deny_statuses_are_300_to_599_and_redirects_need_a_location() {
        for status in [100, 101, 199, 200, 204, 299, 600] {
            let v = Value::from_json_str(&format!(r#"{{"allow": false, "status": {status}}}"#)).unwrap();
            assert!(Decision::from_value(&v).is_err(), "{status}");
        }
        let v = Value::from_json_str(r#"{"allow": false, "status": 302}"#).unwrap();
        assert!(Decision::from_value(&v).unwrap_err().to_string().contains("location"));
        let v = Value::from_json_str(r#"{"allow": false, "status": 302, "response_headers": {"location": "/login"}}"#)
            .unwrap();
        assert_eq!(Decision::from_value(&v).unwrap().status, 302);
        let v = Value::from_json_str(r#"{"allow": false, "status": 451}"#).unwrap();
        assert_eq!(Decision::from_value(&v).unwrap().status, 451);
    }
}
