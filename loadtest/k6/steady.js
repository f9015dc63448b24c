// Steady load: a constant arrival rate (open model: k6 starts iterations on schedule whether or
// not earlier ones have finished, so a slow gateway shows up as latency, not as fewer requests).
//   k6 run -e TOKEN=... -e RATE=2000 -e DURATION=60s loadtest/k6/steady.js
// Thresholds: p99 < P99_MS (default 10 ms) and under 0.1% failed requests.
import { ordersGet } from './lib.js';

const RATE = parseInt(__ENV.RATE || '2000', 10);

export const options = {
  discardResponseBodies: true,
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: Math.max(50, Math.ceil(RATE / 50)),
      maxVUs: Math.max(200, Math.ceil(RATE / 10)),
    },
  },
  thresholds: {
    http_req_duration: [`p(99)<${__ENV.P99_MS || 10}`],
    http_req_failed: ['rate<0.001'],
    dropped_iterations: ['count<1'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

export default function () {
  ordersGet();
}
