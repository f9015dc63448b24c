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
    /// Removed from the request sent upstream (allow only; OPA-Envoy's `request_headers_to_remove`).
    pub remove_headers: Vec<String>,
    /// The body of a deny, sent as the rule gave it (OPA-Envoy's `body`); `None`: the gateway's
    /// own JSON answer.
    pub body: Option<String>,
    /// Query parameters set on the request sent upstream, each replacing every value of its
    /// name (allow only; OPA-Envoy's `query_parameters_to_set`).
    pub query_set: Vec<(String, Vec<String>)>,
    /// Query parameters removed from the request sent upstream (`query_parameters_to_remove`).
    pub query_remove: Vec<String>,
    /// A rate limit of the bundle the decision applies to this request besides the route's own
    /// (a tier chosen from a claim): `rate_limit: "gold"`.
    pub rate_limit: Option<String>,
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
                        "rate_limit" => d.rate_limit = Some(string_of(val, "rate_limit")?),
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

impl Decision {
    /// Reads a result in the OPA-Envoy plugin's forms: `true`/`false`, or an object with
    /// `allowed` (required), `http_status` (a deny's status, default 403), `headers` (added to
    /// the upstream request on allow, to the client's response on deny; a value may be a
    /// list, whose items are joined with `, `), `response_headers_to_add` (to the client's
    /// response on allow), `request_headers_to_remove`, `body` (a deny's body),
    /// `query_parameters_to_set` and `query_parameters_to_remove`; `dynamic_metadata` is
    /// accepted and ignored. Under the same security contract as [`Decision::from_value`]: no
    /// framing or hop-by-hop header may be set or removed.
    pub fn from_envoy(v: &Value) -> Result<Decision, DecisionError> {
        let obj = match v {
            Value::Undefined => return Err(DecisionError::Undefined),
            Value::Bool(b) => return Ok(Decision { allow: *b, status: 403, ..Decision::default() }),
            Value::Object(obj) => obj,
            other => return Err(DecisionError::Shape(format!("expected a boolean or an object, got {other}"))),
        };
        let mut d = Decision { status: 403, ..Decision::default() };
        let mut allowed = None;
        let mut headers = Vec::new();
        for (k, val) in obj.iter() {
            let key = k.as_string().map_err(|_| DecisionError::Shape("non-string key".into()))?;
            match key.as_ref() {
                "allowed" => {
                    allowed =
                        Some(*val.as_bool().map_err(|_| DecisionError::Shape("`allowed` must be a boolean".into()))?)
                }
                "http_status" => {
                    d.status =
                        val.as_u16().map_err(|_| DecisionError::Shape("`http_status` must be a number".into()))?
                }
                "headers" => headers = envoy_headers(val, "headers")?,
                "response_headers_to_add" => d.response_headers = envoy_headers(val, "response_headers_to_add")?,
                "request_headers_to_remove" => {
                    for name in strings(val, "request_headers_to_remove")? {
                        if !valid_header_name(&name) || is_framing_or_hop_by_hop(&name) {
                            return Err(DecisionError::Shape(format!(
                                "`request_headers_to_remove` may not remove `{name}`: it is not a header a decision may change"
                            )));
                        }
                        d.remove_headers.push(name.to_ascii_lowercase());
                    }
                }
                "body" => d.body = Some(string_of(val, "body")?),
                "query_parameters_to_set" => {
                    let params = val
                        .as_object()
                        .map_err(|_| DecisionError::Shape("`query_parameters_to_set` must be an object".into()))?;
                    for (name, values) in params.iter() {
                        let name = name.as_string().map_err(|_| {
                            DecisionError::Shape("`query_parameters_to_set` keys must be strings".into())
                        })?;
                        let values = match values {
                            Value::Array(_) => strings(values, "query_parameters_to_set")?,
                            v => vec![string_of(v, "query_parameters_to_set")?],
                        };
                        d.query_set.push((name.to_string(), values));
                    }
                }
                "query_parameters_to_remove" => d.query_remove = strings(val, "query_parameters_to_remove")?,
                "dynamic_metadata" => {}
                _ => {}
            }
        }
        d.allow = allowed.ok_or_else(|| DecisionError::Shape("the result object has no `allowed`".into()))?;
        if d.allow {
            d.headers = headers;
        } else {
            d.response_headers.extend(headers);
            if !(300..=599).contains(&d.status) {
                return Err(DecisionError::Shape(format!("`http_status` {} is not a deny status (300-599)", d.status)));
            }
        }
        Ok(d)
    }
}

/// A list of strings (`request_headers_to_remove`, `query_parameters_to_remove`).
fn strings(v: &Value, what: &str) -> Result<Vec<String>, DecisionError> {
    let items = v.as_array().map_err(|_| DecisionError::Shape(format!("`{what}` must be a list of strings")))?;
    items
        .iter()
        .map(|i| {
            i.as_string()
                .map(|s| s.to_string())
                .map_err(|_| DecisionError::Shape(format!("`{what}` must be a list of strings")))
        })
        .collect()
}

/// OPA-Envoy headers: an object of strings, or of lists of strings (joined with `, `).
fn envoy_headers(v: &Value, what: &str) -> Result<Vec<(String, String)>, DecisionError> {
    let obj = v.as_object().map_err(|_| DecisionError::Shape(format!("`{what}` must be an object")))?;
    let mut flat = std::collections::BTreeMap::new();
    for (k, val) in obj.iter() {
        let joined = match val {
            Value::Array(_) => strings(val, what)?.join(", "),
            v => string_of(v, what)?,
        };
        flat.insert(k.clone(), Value::from(joined));
    }
    headers_of(&Value::from(flat), what)
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
    http_canon::is_token(n.as_bytes())
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

    #[test]
    fn reads_the_opa_envoy_result_forms() {
        assert!(Decision::from_envoy(&Value::from(true)).unwrap().allow);
        assert_eq!(Decision::from_envoy(&Value::from(false)).unwrap().status, 403);
        let allow = Value::from_json_str(
            r#"{"allowed": true, "headers": {"x-user": "alice", "x-roles": ["a", "b"]},
                "response_headers_to_add": {"x-served": "yes"}, "request_headers_to_remove": ["X-Debug"],
                "query_parameters_to_set": {"tenant": "acme", "tag": ["x", "y"]},
                "query_parameters_to_remove": ["debug"], "dynamic_metadata": {"k": 1}}"#,
        )
        .unwrap();
        let d = Decision::from_envoy(&allow).unwrap();
        assert!(d.allow);
        assert_eq!(d.headers, vec![("x-roles".into(), "a, b".into()), ("x-user".into(), "alice".into())]);
        assert_eq!(d.response_headers, vec![("x-served".into(), "yes".into())]);
        assert_eq!(d.remove_headers, vec!["x-debug".to_string()]);
        assert_eq!(d.query_set.len(), 2);
        assert_eq!(d.query_remove, vec!["debug".to_string()]);
        // On a deny, `headers` go to the client with the status and body.
        let deny = Value::from_json_str(
            r#"{"allowed": false, "http_status": 401, "body": "who are you?", "headers": {"www-authenticate": "Bearer"}}"#,
        )
        .unwrap();
        let d = Decision::from_envoy(&deny).unwrap();
        assert!(!d.allow);
        assert_eq!((d.status, d.body.as_deref()), (401, Some("who are you?")));
        assert_eq!(d.response_headers, vec![("www-authenticate".into(), "Bearer".into())]);
        assert!(d.headers.is_empty());
    }

    #[test]
    fn an_envoy_result_cannot_set_or_remove_framing_headers_or_omit_allowed() {
        for bad in [
            r#"{"allowed": true, "headers": {"content-length": "0"}}"#,
            r#"{"allowed": true, "headers": {"transfer-encoding": ["chunked"]}}"#,
            r#"{"allowed": true, "request_headers_to_remove": ["host"]}"#,
            r#"{"allowed": true, "request_headers_to_remove": ["content-length"]}"#,
            r#"{"allowed": true, "response_headers_to_add": {"x": "a\r\nset-cookie: s=1"}}"#,
            r#"{"allowed": false, "http_status": 200}"#,
            r#"{"http_status": 403}"#,
            r#"{"allowed": "yes"}"#,
            r#""allowed""#,
        ] {
            let v = Value::from_json_str(bad).unwrap();
            assert!(Decision::from_envoy(&v).is_err(), "{bad}");
        }
        assert_eq!(Decision::from_envoy(&Value::Undefined), Err(DecisionError::Undefined));
    }
}
