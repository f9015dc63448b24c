package envoy.admin_test

import data.envoy.admin
import data.envoy.authz_test.alice
import data.envoy.authz_test.bob_admin
import data.envoy.authz_test.now
import data.envoy.authz_test.req

test_an_admin_may_do_anything if {
	admin.allow with input as req("DELETE", "/admin/users/alice", bob_admin) with time.now_ns as now
}

test_a_reader_may_read_the_status_only if {
	admin.allow with input as req("GET", "/admin/status", alice) with time.now_ns as now
	not admin.allow with input as req("GET", "/admin/users", alice) with time.now_ns as now
	not admin.allow with input as req("POST", "/admin/status", alice) with time.now_ns as now
}

test_no_token_no_admin if {
	not admin.allow with input as {"attributes": {"request": {"http": {"method": "GET", "headers": {}}}}, "parsed_path": ["admin", "status"]}
		with time.now_ns as now
}
