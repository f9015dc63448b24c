//! The client of the fleet-wide quota store (Redis or Valkey), for limits with `scope: global`:
//! one exchange per sync interval, pipelined in one round trip and bounded in time, never on
//! the request path.
//!
//! An exchange adds this gateway's counts since the last one to the fleet's (`INCRBY`, each key
//! expiring after its window), reads back the fleet's totals, and says this gateway is alive in
//! a sorted set whose size is the fleet (for each gateway's share of a quota while the store is
//! away). A store that refuses, stalls, resets or answers anything but integers is a
//! [`StoreError`] with a reason label; nothing it says is believed in part.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

/// The sorted set of live gateways (score: Unix millis of each one's last exchange).
const ALIVE: &str = "gateway:quota:alive";

/// Counts to add: `delta` to `key`, which expires `ttl` after its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub key: String,
    pub delta: u64,
    pub ttl: Duration,
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    /// The fleet's total of each increment's key, in order.
    pub totals: Vec<u64>,
    /// Gateways that exchanged within the liveness window, this one included.
    pub fleet: u64,
}

/// Why an exchange failed; [`StoreError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quota store {url}: `{message}` is not a store URL such as redis://127.0.0.1:6379")]
    Url { url: String, message: String },
    #[error("quota store: cannot connect: {0}")]
    Connect(String),
    #[error("quota store: no answer within {0:?}")]
    Timeout(Duration),
    #[error("quota store: the connection failed: {0}")]
    Reset(String),
    #[error("quota store: unexpected answer: {0}")]
    Garbage(String),
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Url { .. } => "url",
            StoreError::Connect(_) => "connect",
            StoreError::Timeout(_) => "timeout",
            StoreError::Reset(_) => "reset",
            StoreError::Garbage(_) => "garbage",
        }
    }

    fn of(e: &redis::RedisError) -> StoreError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            StoreError::Reset(e.to_string())
        } else {
            StoreError::Garbage(e.to_string())
        }
    }
}

pub struct QuotaStore {
    client: redis::Client,
    timeout: Duration,
    /// The connection, made on the first exchange and again after any failure (a connection
    /// that timed out may still have an answer in flight).
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl QuotaStore {
    /// A store at `url` (`redis://HOST:PORT[/DB]`); nothing is connected yet.
    pub fn new(url: &str, timeout: Duration) -> Result<QuotaStore, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Url { url: url.to_owned(), message: e.to_string() })?;
        Ok(QuotaStore { client, timeout, conn: tokio::sync::Mutex::new(None) })
    }

    /// One exchange: `increments` added, their totals read back, this `instance` marked alive
    /// at `now_ms` for `alive_for`, and the fleet counted. Bounded by the store's timeout, the
    /// connection included; any failure drops the connection.
    pub async fn exchange(
        &self,
        increments: &[Increment],
        instance: &str,
        now_ms: u64,
        alive_for: Duration,
    ) -> Result<Exchanged, StoreError> {
        let mut held = self.conn.lock().await;
        let result =
            tokio::time::timeout(self.timeout, self.exchange_on(&mut held, increments, instance, now_ms, alive_for))
                .await
                .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        if result.is_err() {
            *held = None;
        }
        result
    }

    async fn exchange_on(
        &self,
        held: &mut Option<MultiplexedConnection>,
        increments: &[Increment],
        instance: &str,
        now_ms: u64,
        alive_for: Duration,
    ) -> Result<Exchanged, StoreError> {
        if held.is_none() {
            let conn = self.client.get_multiplexed_async_connection().await;
            *held = Some(conn.map_err(|e| StoreError::Connect(e.to_string()))?);
        }
        let Some(conn) = held.as_mut() else { return Err(StoreError::Connect("no connection".into())) };
        let mut pipe = redis::pipe();
        for i in increments {
            pipe.cmd("INCRBY").arg(&i.key).arg(i.delta);
            pipe.cmd("PEXPIRE").arg(&i.key).arg(i.ttl.as_millis() as u64).ignore();
        }
        let oldest = now_ms.saturating_sub(alive_for.as_millis() as u64);
        pipe.cmd("ZADD").arg(ALIVE).arg(now_ms).arg(instance).ignore();
        pipe.cmd("ZREMRANGEBYSCORE").arg(ALIVE).arg("-inf").arg(format!("({oldest}")).ignore();
        pipe.cmd("PEXPIRE").arg(ALIVE).arg(alive_for.as_millis() as u64 * 10).ignore();
        pipe.cmd("ZCARD").arg(ALIVE);
        let answers: Vec<Value> = pipe.query_async(conn).await.map_err(|e| StoreError::of(&e))?;
        read_answers(&answers, increments.len())
    }
}

/// The totals and the fleet's size from the pipeline's answers: exactly `n + 1` integers, none
/// negative; anything else is garbage.
fn read_answers(answers: &[Value], n: usize) -> Result<Exchanged, StoreError> {
    if answers.len() != n + 1 {
        return Err(StoreError::Garbage(format!("{} answers to {} questions", answers.len(), n + 1)));
    }
    let int = |v: &Value| match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => Err(StoreError::Garbage(format!("{other:?} where a count belongs"))),
    };
    let totals = answers[..n].iter().map(int).collect::<Result<Vec<_>, _>>()?;
    Ok(Exchanged { totals, fleet: int(&answers[n])? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn inc(key: &str, delta: u64) -> Increment {
        Increment { key: key.into(), delta, ttl: Duration::from_secs(60) }
    }

    const ALIVE_FOR: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn gateways_add_up_their_counts_and_see_the_fleet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = test_support::redis::Redis::start(dir.path());
        let a = QuotaStore::new(&redis.url(), Duration::from_secs(1)).expect("store");
        let b = QuotaStore::new(&redis.url(), Duration::from_secs(1)).expect("store");
        let now = 1_000_000;
        let got = a.exchange(&[inc("q:k1", 5), inc("q:k2", 1)], "gw-a", now, ALIVE_FOR).await.expect("a");
        assert_eq!(got, Exchanged { totals: vec![5, 1], fleet: 1 });
        let got = b.exchange(&[inc("q:k1", 7)], "gw-b", now + 10, ALIVE_FOR).await.expect("b");
        assert_eq!(got, Exchanged { totals: vec![12], fleet: 2 });
        // A gateway silent for longer than the liveness window is no longer counted.
        let got = b.exchange(&[], "gw-b", now + 5_000, ALIVE_FOR).await.expect("b");
        assert_eq!(got.fleet, 1);
        assert!(redis.command(&["PTTL", "q:k1"]).expect("pttl").parse::<i64>().is_ok_and(|t| t > 0), "keys expire");
    }

    #[tokio::test]
    async fn a_store_that_goes_away_is_an_error_and_comes_back_without_help() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = test_support::redis::Redis::start(dir.path());
        let store = QuotaStore::new(&redis.url(), Duration::from_millis(500)).expect("store");
        store.exchange(&[inc("q:k", 1)], "gw", 1, ALIVE_FOR).await.expect("first");
        redis.kill9();
        let e = store.exchange(&[inc("q:k", 1)], "gw", 2, ALIVE_FOR).await.expect_err("down");
        assert!(matches!(e.reason(), "reset" | "connect"), "{e}");
        redis.restart();
        let got = store.exchange(&[inc("q:k", 3)], "gw", 3, ALIVE_FOR).await.expect("back");
        assert_eq!(got.totals, vec![3], "a restarted store starts from zero");
    }

    /// A fake store on a loopback port that reads a little of each connection and then does
    /// `answer` with it.
    fn hostile(answer: fn(&mut std::net::TcpStream)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for conn in listener.incoming().take(8) {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                answer(&mut conn);
            }
        });
        format!("redis://{addr}")
    }

    #[tokio::test]
    async fn a_hostile_store_changes_nothing_but_an_error_count() {
        let timeout = Duration::from_millis(300);
        let garbage = hostile(|c| {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\n\r\n:-5\r\n");
            std::thread::sleep(Duration::from_millis(500));
        });
        let stall = hostile(|_| std::thread::sleep(Duration::from_secs(2)));
        let reset = hostile(|c| {
            let _ = c.shutdown(std::net::Shutdown::Both);
        });
        for (url, reasons) in [
            (garbage, &["garbage", "connect", "reset"][..]),
            (stall, &["timeout"][..]),
            (reset, &["connect", "reset"][..]),
        ] {
            let store = QuotaStore::new(&url, timeout).expect("store");
            let started = std::time::Instant::now();
            let e = store.exchange(&[inc("q:k", 1)], "gw", 1, ALIVE_FOR).await.expect_err("refused");
            assert!(reasons.contains(&e.reason()), "{url}: {e}");
            assert!(started.elapsed() < timeout * 3, "{url}: bounded in time: {:?}", started.elapsed());
        }
    }

    #[test]
    fn only_integers_in_the_expected_number_are_believed() {
        let ints = |v: &[i64]| v.iter().map(|i| Value::Int(*i)).collect::<Vec<_>>();
        assert_eq!(read_answers(&ints(&[4, 2]), 1).expect("ok"), Exchanged { totals: vec![4], fleet: 2 });
        assert_eq!(read_answers(&ints(&[4]), 1).expect_err("short").reason(), "garbage");
        assert_eq!(read_answers(&ints(&[-4, 2]), 1).expect_err("negative").reason(), "garbage");
        assert_eq!(read_answers(&[Value::Nil, Value::Int(1)], 1).expect_err("nil").reason(), "garbage");
        assert!(QuotaStore::new("http://x", Duration::from_secs(1)).is_err());
    }
}
