# The bearer token, verified in Rego against the bundle's JWKS, as OPA-Envoy users write it.
# `time` is passed explicitly so that tests can fix the clock (`with time.now_ns as ...`).
package envoy.token

bearer := t if {
	auth := input.attributes.request.http.headers.authorization
	startswith(auth, "Bearer ")
	t := substring(auth, count("Bearer "), -1)
}

verified := [valid, header, payload] if {
	[valid, header, payload] := io.jwt.decode_verify(bearer, {
		"cert": json.marshal(data.envoy.keys.jwks),
		"iss": "https://id.example.test",
		"aud": "people-api",
		"time": time.now_ns(),
	})
}

valid if verified[0]

claims := verified[2] if valid

roles := {r | some r in claims.roles}
