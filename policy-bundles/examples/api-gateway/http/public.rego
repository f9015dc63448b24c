# Public content: anyone may read it.
package http.public

import rego.v1

default allow := false

allow if input.request.method in {"GET", "HEAD"}
