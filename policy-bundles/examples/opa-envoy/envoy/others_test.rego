# Tests of the health, search, transfers and legacy policies, in the OPA-Envoy input shape.
package envoy.others_test

import data.envoy.health
import data.envoy.legacy
import data.envoy.search
import data.envoy.transfers

http(method) := {"attributes": {"request": {"http": {"method": method, "headers": {}}}}}

test_health_is_get_or_head_only if {
	health.allow with input as http("GET")
	health.allow with input as http("HEAD")
	not health.allow with input as http("POST")
}

test_search_takes_up_to_three_known_tags if {
	search.result.allowed with input as {"parsed_query": {"tag": ["books", "music"]}}
	r := search.result with input as {"parsed_query": {"tag": ["books", "music", "films", "games"]}}
	not r.allowed
	r.body == "at most three tags"
}

test_search_names_the_unknown_tags if {
	r := search.result with input as {"parsed_query": {"tag": ["books", "zzz", "aaa"]}}
	not r.allowed
	r.http_status == 400
	r.body == "unknown tags: aaa, zzz"
}

test_search_needs_a_tag if {
	not search.result.allowed with input as {"parsed_query": {"q": ["x"]}}
}

test_transfers_up_to_the_limit if {
	r := transfers.result with input as {"parsed_body": {"amount": 250, "to": "acct-2"}}
	r.allowed
	r.headers["x-transfer-checked"] == "true"
}

test_transfers_over_the_limit_are_422_with_a_json_body if {
	r := transfers.result with input as {"parsed_body": {"amount": 5000, "to": "acct-2"}}
	not r.allowed
	r.http_status == 422
	json.unmarshal(r.body).limit == 1000
}

test_a_transfer_without_a_json_body_is_400 if {
	r := transfers.result with input as {"attributes": {"request": {"http": {"body": "amount=5"}}}}
	r.http_status == 400
}

test_legacy_rewrites_the_request if {
	r := legacy.headers.result with input as http("GET")
	r.allowed
	r.request_headers_to_remove == ["x-debug"]
	r.query_parameters_to_set.version == "2"
}

test_legacy_refuses_writes if {
	r := legacy.headers.result with input as http("DELETE")
	r.http_status == 405
}
