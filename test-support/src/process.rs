//! Child processes for tests: killed (and reaped) when dropped, started and waited for by the
//! one line every server of the workspace prints once bound: `listening on ADDR`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A line of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`...), as bytes; 0 if the process is gone.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory of a process now (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS")
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kb(pid, "VmHWM")
}

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
        let mut child =
            cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
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

/// [`Proc::spawn_listening`] for a caller that retries (a restart on a port that may not be
/// free yet): a child that cannot start or prints no `listening on ADDR` line is an error.
pub fn try_spawn_listening(cmd: &mut Command) -> Result<(Proc, SocketAddr), String> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc(child);
    let addr =
        read_listening(stdout).ok_or_else(|| format!("{:?} printed no `listening on ADDR` line", cmd.get_program()))?;
    Ok((proc, addr))
}

/// A free port below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), for a
/// server that is told its port: no other process's `bind(:0)` or outgoing connection can take
/// it between this call and the server binding it, as can happen to a [`free_port`] while many
/// tests run at once.
pub fn free_port_outside_ephemeral() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u32, low.saturating_sub(10_000).max(1));
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = from + seed.wrapping_add(n.wrapping_mul(7_919)) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(l);
            return port as u16;
        }
    }
    free_port()
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
