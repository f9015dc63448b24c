// Spike: a baseline rate, a sudden jump to SPIKE_X times it for SPIKE_FOR, then back.
// With `limits` set, the gateway sheds the excess with 503 + Retry-After (counted as expected,
// see lib.js) and keeps served latency bounded; the thresholds check exactly that.
//   k6 run -e TOKEN=... -e RATE=1000 -e SPIKE_X=10 loadtest/k6/spike.js
import { Counter } from 'k6/metrics';
import { ordersGet } from './lib.js';

const RATE = parseInt(__ENV.RATE || '1000', 10);
const SPIKE = RATE * parseInt(__ENV.SPIKE_X || '10', 10);
const shed = new Counter('shed');

export const options = {
  discardResponseBodies: true,
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: RATE,
      timeUnit: '1s',
      preAllocatedVUs: Math.max(100, Math.ceil(SPIKE / 20)),
      maxVUs: Math.max(500, Math.ceil(SPIKE / 5)),
      stages: [
        { target: RATE, duration: __ENV.BASELINE_FOR || '20s' },
        { target: SPIKE, duration: '2s' },
        { target: SPIKE, duration: __ENV.SPIKE_FOR || '10s' },
        { target: RATE, duration: '2s' },
        { target: RATE, duration: __ENV.BASELINE_FOR || '20s' },
      ],
    },
  },
  thresholds: {
    // Every request gets an answer: served or shed, nothing else.
    http_req_failed: ['rate<0.001'],
    // Served requests stay fast even during the spike.
    'http_req_duration{status:200}': [`p(99)<${__ENV.P99_MS || 100}`],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

export default function () {
  const res = ordersGet();
  if (res.status === 503) shed.add(1);
}
