# The orders API: readers may list and fetch orders, writers may also change them.
# The authenticated user's id and roles are passed upstream as headers.
package http.orders

import rego.v1

read_methods := {"GET", "HEAD"}

write_methods := {"POST", "PUT", "PATCH", "DELETE"}

roles contains r if some r in input.jwt.claims.roles

allowed if {
	input.request.method in read_methods
	some r in {"reader", "writer"}
	r in roles
}

allowed if {
	input.request.method in write_methods
	"writer" in roles
}

decision := {
	"allow": true,
	"headers": {
		"x-user-id": input.jwt.claims.sub,
		"x-user-roles": concat(",", sort([r | some r in roles])),
	},
	"response_headers": {"x-decided-by": "http.orders"},
} if {
	allowed
} else := {
	"allow": false,
	"status": 401,
	"reason": "a bearer token is required",
} if {
	not input.jwt
} else := {
	"allow": false,
	"status": 403,
	"reason": sprintf("%s may not %s orders", [input.jwt.claims.sub, lower(input.request.method)]),
}
