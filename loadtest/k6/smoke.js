// Smoke: one virtual user walks the README's requests and checks every answer.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TOKEN=$(target/release/demo-token --sub alice --role reader) loadtest/k6/smoke.js
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, TOKEN } from './lib.js';

export const options = {
  vus: 1,
  duration: __ENV.DURATION || '10s',
  thresholds: { checks: ['rate==1.0'] },
};

const auth = { headers: { authorization: `Bearer ${TOKEN}` } };

export default function () {
  check(http.get(`${BASE_URL}/public/hello`), { 'public GET: 200': (r) => r.status === 200 });
  check(http.get(`${BASE_URL}/orders/7`), { 'orders without token: 401': (r) => r.status === 401 });
  check(http.get(`${BASE_URL}/orders/7`, auth), {
    'orders as reader: 200': (r) => r.status === 200,
    'upstream saw x-user-id': (r) => r.status === 200 && r.json('headers')['x-user-id'] === 'alice',
  });
  check(http.post(`${BASE_URL}/orders`, '{}', auth), { 'orders POST as reader: 403': (r) => r.status === 403 });
  check(http.get(`${BASE_URL}/orders/7`, { headers: { authorization: 'Bearer garbage' } }), {
    'garbage token: 401': (r) => r.status === 401,
  });
  check(http.get(`${BASE_URL}/nowhere`), { 'no route: 404': (r) => r.status === 404 });
}
