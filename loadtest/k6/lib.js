// Shared settings for the k6 scripts. Everything comes from the environment (k6 -e NAME=...):
//   BASE_URL   the gateway's proxy listener           (default http://127.0.0.1:8080)
//   TOKEN      a bearer JWT, e.g. $(target/release/demo-token --sub alice --role reader)
//   TARGET     the request path                       (default /orders/7)
// The request is the runner's: an authenticated orders GET by a reader, so JWT verification
// and the route's Rego rule run on every request.
import http from 'k6/http';
import { check } from 'k6';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const TARGET = __ENV.TARGET || '/orders/7';
export const TOKEN = __ENV.TOKEN || '';

if (!TOKEN) {
  throw new Error('set TOKEN: k6 run -e TOKEN=$(target/release/demo-token --sub alice --role reader) ...');
}

export const params = {
  headers: { authorization: `Bearer ${TOKEN}` },
  // Shed requests are an answer, not a failure: count only what is neither 2xx nor 503.
  responseCallback: http.expectedStatuses({ min: 200, max: 299 }, 503),
};

/** One authenticated orders GET; checks that it was allowed (or shed). */
export function ordersGet() {
  const res = http.get(`${BASE_URL}${TARGET}`, params);
  check(res, {
    'allowed (200) or shed (503)': (r) => r.status === 200 || r.status === 503,
    'policy ran (x-decided-by)': (r) => r.status !== 200 || r.headers['X-Decided-By'] === 'http.orders',
  });
  return res;
}
