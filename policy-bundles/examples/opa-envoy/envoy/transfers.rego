# POST /transfers with a JSON body: the policy reads parsed_body. Large transfers are refused
# with 422 and a JSON body; a body that is not a JSON object is a 400.
package envoy.transfers

body := input.parsed_body

limit := 1000

default result := {"allowed": false, "http_status": 400, "body": "{\"error\": \"a JSON body with `amount` and `to` is required\"}", "headers": {"content-type": "application/json"}}

result := {"allowed": true, "headers": {"x-transfer-checked": "true"}} if {
	is_number(body.amount)
	body.amount > 0
	body.amount <= limit
	is_string(body.to)
}

result := {"allowed": false, "http_status": 422, "body": json.marshal({"error": "amount over limit", "limit": limit}), "headers": {"content-type": "application/json"}} if {
	is_number(body.amount)
	body.amount > limit
}
