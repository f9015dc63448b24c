# Health checks: a plain boolean result. Anyone may GET or HEAD /healthz; nothing else.
package envoy.health

default allow := false

allow if input.attributes.request.http.method in {"GET", "HEAD"}
