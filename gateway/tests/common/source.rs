//! A scriptable bundle source for tests: a small HTTP server (thread per connection) whose
//! answer to `GET` each test sets — a good bundle with ETag, 304 and long-poll support, or a
//! fault (an error status, garbage, a wrong digest, a hang after headers, a trickle).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Answer {
    /// A bundle with `ETag: "<sha256>"`; honours `If-None-Match` and `Prefer: wait=N`.
    Bundle(Vec<u8>),
    /// These bytes with this ETag, whatever they are.
    Body {
        bytes: Vec<u8>,
        etag: String,
    },
    Status {
        code: u16,
        retry_after: Option<u64>,
    },
    /// Headers of a 200, then silence.
    HangAfterHeaders,
    /// A 200 whose body arrives one byte per `every`.
    Trickle {
        bytes: Vec<u8>,
        every: Duration,
    },
    /// Accepts and closes at once.
    Close,
}

struct State {
    answer: Answer,
    generation: u64,
    /// The `If-None-Match` of every request, in order.
    seen: Vec<Option<String>>,
}

pub struct Source {
    pub addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

fn digest(bytes: &[u8]) -> String {
    policy_bundles::digest(bytes)
}

impl Source {
    pub fn start(answer: Answer) -> Source {
        Source::start_on(0, answer)
    }

    pub fn start_on(port: u16, answer: Answer) -> Source {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new((Mutex::new(State { answer, generation: 0, seen: Vec::new() }), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Source { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the answer and wakes held long polls.
    pub fn set(&self, answer: Answer) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("lock");
        s.answer = answer;
        s.generation += 1;
        cv.notify_all();
    }

    pub fn requests(&self) -> Vec<Option<String>> {
        self.state.0.lock().expect("lock").seen.clone()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        self.set(Answer::Close);
    }
}

fn serve(conn: TcpStream, state: &Arc<(Mutex<State>, Condvar)>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut inm = None;
        let mut wait = 0u64;
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "if-none-match" => inm = Some(v.trim().to_owned()),
                    "prefer" => wait = v.trim().strip_prefix("wait=").and_then(|n| n.parse().ok()).unwrap_or(0),
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        if line.starts_with("POST") {
            out.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let (m, cv) = &**state;
        let mut s = m.lock().expect("lock");
        s.seen.push(inm.clone());
        let deadline = Instant::now() + Duration::from_secs(wait);
        // Long poll: hold while the client already has the current bundle.
        loop {
            let current = match &s.answer {
                Answer::Bundle(b) => Some(format!("\"{}\"", digest(b))),
                _ => None,
            };
            if wait == 0 || current.is_none() || current != inm || Instant::now() >= deadline {
                break;
            }
            let gen = s.generation;
            let (guard, _) = cv.wait_timeout(s, deadline.saturating_duration_since(Instant::now())).expect("wait");
            s = guard;
            if s.generation != gen {
                continue;
            }
        }
        let answer = s.answer.clone();
        drop(s);
        match answer {
            Answer::Bundle(b) => {
                let etag = format!("\"{}\"", digest(&b));
                if inm.as_deref() == Some(etag.as_str()) {
                    write!(out, "HTTP/1.1 304 Not Modified\r\netag: {etag}\r\ncontent-length: 0\r\n\r\n")?;
                } else {
                    write!(out, "HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n", b.len())?;
                    out.write_all(&b)?;
                }
            }
            Answer::Body { bytes, etag } => {
                write!(out, "HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n", bytes.len())?;
                out.write_all(&bytes)?;
            }
            Answer::Status { code, retry_after } => {
                let ra = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
                write!(out, "HTTP/1.1 {code} Scripted\r\n{ra}content-length: 0\r\n\r\n")?;
            }
            Answer::HangAfterHeaders => {
                out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")?;
                std::thread::sleep(Duration::from_secs(60));
                return Ok(());
            }
            Answer::Trickle { bytes, every } => {
                write!(out, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", bytes.len())?;
                for b in bytes {
                    out.write_all(&[b])?;
                    out.flush()?;
                    std::thread::sleep(every);
                }
                return Ok(());
            }
            Answer::Close => return Ok(()),
        }
    }
}
