# Administration: only admins, and only from a tenant listed in data.http.admin.tenants.
package http.admin

import rego.v1

decision := {"allow": true, "headers": {"x-user-id": input.jwt.claims.sub}} if {
	"admin" in input.jwt.claims.roles
	input.request.headers["x-tenant"] in data.http.admin.tenants
} else := {"allow": false, "status": 403, "reason": "admins of a known tenant only"}
