// Bundle churn: steady traffic through the gateway while a publisher pushes a new bundle
// revision to control-api every second (alternating two tarballs, so each push is a change the
// gateway must fetch, verify, compile and swap in). Compare its p99 with steady.js at the same
// RATE: the target is within 10%.
//   Two bundles that differ in content (`bundlectl build` names the revision by content, so a
//   different .manifest "revision" alone is not enough), e.g. a data file under a root:
//     cp -r policy-bundles/examples/api-gateway /tmp/a && mkdir -p /tmp/a/http/churn
//     echo '{"n": "a"}' > /tmp/a/http/churn/data.json && bundlectl build /tmp/a -o /tmp/a.tar.gz
//     (the same with "b" for /tmp/b.tar.gz)
//   k6 run -e TOKEN=... -e CONTROL_URL=http://127.0.0.1:8181 -e PUBLISH_TOKEN=... \
//          -e BUNDLE_A=/tmp/a.tar.gz -e BUNDLE_B=/tmp/b.tar.gz -e BUNDLE_NAME=main loadtest/k6/bundle-churn.js
// The gateway must poll that control-api (bundle.sources) with long polling on.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import { ordersGet } from './lib.js';

const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '60s';
const CONTROL_URL = __ENV.CONTROL_URL || 'http://127.0.0.1:8181';
const NAME = __ENV.BUNDLE_NAME || 'main';
const bundles = [open(__ENV.BUNDLE_A, 'b'), open(__ENV.BUNDLE_B, 'b')];
const published = new Counter('bundles_published');

export const options = {
  discardResponseBodies: true,
  scenarios: {
    traffic: {
      executor: 'constant-arrival-rate',
      exec: 'traffic',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(50, Math.ceil(RATE / 50)),
      maxVUs: Math.max(200, Math.ceil(RATE / 10)),
    },
    publisher: {
      executor: 'constant-arrival-rate',
      exec: 'publish',
      rate: 1,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 4,
    },
  },
  thresholds: {
    'http_req_duration{scenario:traffic}': [`p(99)<${__ENV.P99_MS || 10}`],
    'http_req_failed{scenario:traffic}': ['rate<0.001'],
    'checks{scenario:publisher}': ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

export function traffic() {
  ordersGet();
}

export function publish() {
  // Alternate across the whole test (__ITER counts per VU, and the publisher has several VUs).
  const body = bundles[exec.scenario.iterationInTest % 2];
  const res = http.put(`${CONTROL_URL}/v1/bundles/${NAME}`, body, {
    headers: { authorization: `Bearer ${__ENV.PUBLISH_TOKEN}`, 'content-type': 'application/gzip' },
    responseCallback: http.expectedStatuses(200, 201),
  });
  if (check(res, { 'published (201/200)': (r) => r.status === 201 || r.status === 200 })) {
    published.add(1);
  }
}
