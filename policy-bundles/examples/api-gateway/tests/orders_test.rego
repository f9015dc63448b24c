# Unit tests of the orders rule; run with `bundlectl test`. Test modules live under tests/,
# which the gateway never loads.
package http.orders_test

import rego.v1

import data.http.orders

reader := {"sub": "alice", "roles": ["reader"]}

writer := {"sub": "bob", "roles": ["writer"]}

req(method, claims) := {
	"request": {"method": method, "path": "/orders", "query": {}, "headers": {}},
	"route": "orders",
	"jwt": {"issuer": "https://id.example.test", "claims": claims},
}

test_reader_may_read if {
	d := orders.decision with input as req("GET", reader)
	d.allow
	d.headers["x-user-id"] == "alice"
	d.headers["x-user-roles"] == "reader"
}

test_reader_may_not_write if {
	d := orders.decision with input as req("PUT", reader)
	not d.allow
	d.status == 403
	d.reason == "alice may not put orders"
}

test_writer_may_write if {
	orders.allowed with input as req("PATCH", writer)
}

test_writer_may_read if {
	orders.allowed with input as req("HEAD", writer)
}

test_no_token_is_401 if {
	d := orders.decision with input as {"request": {"method": "GET", "path": "/orders"}, "route": "orders"}
	d == {"allow": false, "status": 401, "reason": "a bearer token is required"}
}

test_unknown_role_may_do_nothing if {
	d := orders.decision with input as req("GET", {"sub": "eve", "roles": ["guest"]})
	not d.allow
	d.reason == "eve may not get orders"
}
