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
                            if !(100..=599).contains(&s) {
                                return Err(DecisionError::Shape(format!("`status` {s} is not an HTTP status")));
                            }
                            d.status = s;
                        }
                        "reason" => d.reason = Some(string_of(val, "reason")?),
                        "headers" => d.headers = headers_of(val, "headers")?,
                        "response_headers" => d.response_headers = headers_of(val, "response_headers")?,
                        _ => {}
                    }
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
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn valid_header_name(n: &str) -> bool {
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
}
