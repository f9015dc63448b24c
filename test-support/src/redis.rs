//! A real Redis (Debian's `redis-server`, installed by `.ci/run`) for the tests of a fleet-wide
//! quota store: started on a free loopback port without persistence, stopped on drop, and
//! killed and started again on the same port (a store that goes away and comes back).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, Proc};
use crate::wait::eventually;

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    /// Starts a Redis whose working directory is `dir`, and waits until it answers `PING`.
    pub fn start(dir: &Path) -> Redis {
        let mut r = Redis { port: free_port(), dir: dir.to_owned(), proc: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.proc = Some(Proc::spawn(&mut cmd));
        eventually(Duration::from_secs(10), "redis-server to answer PING", || {
            self.command(&["PING"]).is_ok_and(|r| r == "PONG")
        });
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): every connection to it is reset, its data is gone.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
            p.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends one command and reads one simple answer (a status, an error, an integer, a bulk
    /// string or nil), as text: for tests to look at what the store holds.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_owned()),
            Some(("-", rest)) => Err(bad(rest.to_owned())),
            Some(("$", "-1")) => Ok(String::new()),
            Some(("$", _)) => {
                let mut value = String::new();
                r.read_line(&mut value)?;
                Ok(value.trim_end().to_owned())
            }
            _ => Err(bad(format!("unexpected answer `{line}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_redis_starts_answers_and_comes_back_empty_after_a_kill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis::start(dir.path());
        assert_eq!(r.command(&["INCRBY", "q", "5"]).expect("incrby"), "5");
        assert_eq!(r.command(&["GET", "q"]).expect("get"), "5");
        r.kill9();
        assert!(r.command(&["PING"]).is_err(), "a killed store refuses connections");
        r.restart();
        assert_eq!(r.command(&["GET", "q"]).expect("get"), "", "nothing persisted");
        assert!(r.url().starts_with("redis://127.0.0.1:"));
    }
}
