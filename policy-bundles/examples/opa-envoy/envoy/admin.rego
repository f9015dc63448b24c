# /admin: method and path RBAC on parsed_path, a boolean result. Admins may do anything; anyone
# with a valid token may read /admin/status; nothing else.
package envoy.admin

import data.envoy.token

default allow := false

allow if "admin" in token.roles

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["admin", "status"]
	token.valid
}
