# A policy kept in Rego v0 syntax (no `if`; `.manifest` says so in file_rego_versions): it
# allows GETs under /legacy and rewrites the request on its way upstream.
package envoy.legacy.headers

import future.keywords.in

default allow = false

allow {
	input.attributes.request.http.method == "GET"
}

result = {
	"allowed": true,
	"headers": {"x-legacy": "yes"},
	"request_headers_to_remove": ["x-debug"],
	"response_headers_to_add": {"cache-control": "no-store"},
	"query_parameters_to_set": {"version": "2"},
	"query_parameters_to_remove": ["trace"],
} {
	allow
}

result = {"allowed": false, "http_status": 405, "body": "only GET under /legacy"} {
	not allow
}
