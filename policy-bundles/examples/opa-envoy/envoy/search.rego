# /search?tag=a&tag=b: every tag must be a known one and there may be at most three; a denied
# search says which tags were refused.
package envoy.search

known := {"books", "music", "films", "games"}

tags := object.get(input.parsed_query, "tag", [])

unknown := {t | some t in tags; not t in known}

default result := {"allowed": false, "http_status": 400, "body": "at least one tag is required"}

result := {"allowed": true} if {
	count(tags) > 0
	count(tags) <= 3
	count(unknown) == 0
}

result := {"allowed": false, "http_status": 400, "body": sprintf("unknown tags: %v", [concat(", ", sort(unknown))])} if {
	count(unknown) > 0
}

result := {"allowed": false, "http_status": 400, "body": "at most three tags"} if {
	count(unknown) == 0
	count(tags) > 3
}
