# /people: who may do what, decided on the verified token's roles and on parsed_path. The result
# is an object built from ref-head rules, as OPA-Envoy users write their decisions.
package envoy.authz

import data.envoy.token

http_request := input.attributes.request.http

# /people → ["people"], /people/alice → ["people", "alice"]
path := input.parsed_path

default allowed := false

# Readers list people and read any one person.
allowed if {
	http_request.method == "GET"
	path[0] == "people"
	count(path) <= 2
	"reader" in token.roles
}

# Everyone may change their own record.
allowed if {
	http_request.method in {"PUT", "PATCH"}
	path == ["people", token.claims.sub]
}

# Admins may do anything under /people.
allowed if "admin" in token.roles

result.allowed := allowed

result.headers := {"x-user": token.claims.sub, "x-user-roles": concat(",", sort([r | some r in token.roles]))} if allowed

result.response_headers_to_add := {"x-policy": "envoy.authz"} if allowed

result.http_status := 401 if not token.valid

result.http_status := 403 if {
	token.valid
	not allowed
}

result.body := "a valid bearer token is required" if not token.valid

result.headers := {"www-authenticate": "Bearer realm=\"people\""} if not token.valid
