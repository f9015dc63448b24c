# Tests in the OPA-Envoy plugin's input shape; run with `bundlectl test` (or `opa test`).
package envoy.authz_test

import data.envoy.authz

# Demo tokens (test-support/keys/demo-es256.pem, aud people-api): valid from 2026-12-03 for ten
# years. The clock is fixed for every test.
alice := "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImRlbW8tZXMyNTYifQ.eyJhdWQiOiJwZW9wbGUtYXBpIiwiZXhwIjoyMTExNjc1NTQ2LCJpYXQiOjE3OTYzMTU1NDYsImlzcyI6Imh0dHBzOi8vaWQuZXhhbXBsZS50ZXN0IiwibmJmIjoxNzk2MzE1NTQ2LCJyb2xlcyI6WyJyZWFkZXIiXSwic3ViIjoiYWxpY2UifQ.cKLOaNMaZzqqJ_SLasXuznWxu5ul192rpLwLGCnXMdtqS31UyxaQ3Kf49yp2nSDcNmS88YvFHivNwtiylZFgjw"

bob_admin := "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImRlbW8tZXMyNTYifQ.eyJhdWQiOiJwZW9wbGUtYXBpIiwiZXhwIjoyMTExNjc1NTQ2LCJpYXQiOjE3OTYzMTU1NDYsImlzcyI6Imh0dHBzOi8vaWQuZXhhbXBsZS50ZXN0IiwibmJmIjoxNzk2MzE1NTQ2LCJyb2xlcyI6WyJhZG1pbiJdLCJzdWIiOiJib2IifQ.JxCzIK-unfzgbIzPU3zJdzqWrT5cblVueqs6b8D7nZsD5sqFD32-hd6lbTZJ_n6_S8RlBDKTm3msbPNw2kv3BQ"

# Signed by a trusted key, for another audience.
carol_other_api := "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImRlbW8tZXMyNTYifQ.eyJhdWQiOiJvdGhlci1hcGkiLCJleHAiOjIxMTE2NzU1NDYsImlhdCI6MTc5NjMxNTU0NiwiaXNzIjoiaHR0cHM6Ly9pZC5leGFtcGxlLnRlc3QiLCJuYmYiOjE3OTYzMTU1NDYsInJvbGVzIjpbInJlYWRlciJdLCJzdWIiOiJjYXJvbCJ9.LkbpuDKnwNqmoeTlTj2r4ZjDIzX2eAEcBZY3Iq4eW0tfPmUtvfk1yJmJ7CIDRZOdjBrLDv5PNIovN2oQwjno7w"

now := 1800000000000000000 # 2027-01-15

req(method, path, token) := {"attributes": {"request": {"http": {
	"method": method,
	"path": path,
	"host": "people.example.test",
	"headers": {":authority": "people.example.test", ":method": method, ":path": path, "authorization": concat(" ", ["Bearer", token])},
}}}, "parsed_path": split(trim_left(path, "/"), "/"), "parsed_query": {}}

test_a_reader_lists_people if {
	r := authz.result with input as req("GET", "/people", alice) with time.now_ns as now
	r.allowed
	r.headers["x-user"] == "alice"
	r.headers["x-user-roles"] == "reader"
}

test_a_reader_may_not_delete if {
	r := authz.result with input as req("DELETE", "/people/bob", alice) with time.now_ns as now
	not r.allowed
	r.http_status == 403
}

test_everyone_may_change_their_own_record_only if {
	authz.result.allowed with input as req("PUT", "/people/alice", alice) with time.now_ns as now
	not authz.result.allowed with input as req("PUT", "/people/bob", alice) with time.now_ns as now
}

test_an_admin_may_delete if {
	authz.result.allowed with input as req("DELETE", "/people/alice", bob_admin) with time.now_ns as now
}

test_no_token_is_401_with_a_body if {
	r := authz.result with input as {"attributes": {"request": {"http": {"method": "GET", "headers": {}}}}, "parsed_path": ["people"]}
		with time.now_ns as now
	not r.allowed
	r.http_status == 401
	r.body == "a valid bearer token is required"
	r.headers["www-authenticate"]
}

test_a_token_for_another_audience_is_401 if {
	r := authz.result with input as req("GET", "/people", carol_other_api) with time.now_ns as now
	r.http_status == 401
}

test_an_expired_token_is_401 if {
	r := authz.result with input as req("GET", "/people", alice) with time.now_ns as 2200000000000000000
	r.http_status == 401
}

test_a_tampered_token_is_401 if {
	forged := concat(".", array.concat(array.slice(split(alice, "."), 0, 2), ["AAAA"]))
	r := authz.result with input as req("GET", "/people", forged) with time.now_ns as now
	r.http_status == 401
}
