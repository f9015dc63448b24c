//! Child processes for tests: killed (and reaped) when dropped, started and waited for by the
//! one line every server of the workspace prints once bound: `listening on ADDR`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` as is (its stdio as the caller set it).
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program())))
    }

    /// Starts `cmd` with stdout piped and waits for its `listening on ADDR` line; the rest of
    /// stdout is drained on a thread so that the child never blocks on a full pipe.
    pub fn spawn_listening(cmd: &mut Command) -> (Proc, SocketAddr) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("stdout");
        let mut proc = Proc(child);
        match read_listening(stdout) {
            Some(addr) => (proc, addr),
            None => {
                let status = proc.0.try_wait().ok().flatten();
                panic!("{:?} printed no `listening on ADDR` line (exit: {status:?})", cmd.get_program())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the process with SIGKILL and reaps it (a crash, as far as the others can tell).
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads the first line; `Some(addr)` when it is `listening on ADDR`. Keeps draining after.
fn read_listening(stdout: ChildStdout) -> Option<SocketAddr> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    parse_listening(&line)
}

/// `listening on 127.0.0.1:1234` → the address.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening on ")?.parse().ok()
}

/// A port free at the time of the call (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The port of a `http://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line_or_nothing() {
        assert_eq!(parse_listening("listening on 127.0.0.1:80\n"), Some("127.0.0.1:80".parse().expect("addr")));
        assert_eq!(parse_listening("listening on [::1]:9\n"), Some("[::1]:9".parse().expect("addr")));
        assert_eq!(parse_listening("ready\n"), None);
        assert_eq!(port_of("http://127.0.0.1:8080"), 8080);
    }
}
