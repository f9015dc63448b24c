//! Child processes for tests and load runs: stopped (and reaped) when dropped, started and
//! waited for by the one line every server of the workspace prints once bound:
//! `listening on ADDR`; how a harness starts a server again after a restart ([`Launch`]); ports.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

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

/// A child process that does not outlive its owner. Dropped, it is killed with SIGKILL and
/// reaped, or, once [`Proc::terminate_on_drop`] has set a grace period, asked to stop with
/// SIGTERM and killed only if it is still running when the grace period ends.
///
/// Every method takes `&self` (the child sits behind a lock), so that a harness can look at a
/// process it only borrows, for instance to stop waiting for one that has exited.
pub struct Proc {
    child: Mutex<Child>,
    pid: u32,
    /// The program's name, for messages.
    program: String,
    grace: Option<Duration>,
}

impl Proc {
    fn new(child: Child, cmd: &Command) -> Proc {
        let program = Path::new(cmd.get_program()).file_name().unwrap_or(cmd.get_program());
        Proc { pid: child.id(), child: Mutex::new(child), program: program.to_string_lossy().into_owned(), grace: None }
    }

    /// Starts `cmd` as is (its stdio as the caller set it); panics if it cannot start.
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc::try_spawn(cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Proc::spawn`] for a caller that reports rather than panics.
    pub fn try_spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        Ok(Proc::new(child, cmd))
    }

    /// Starts `cmd` with stdout piped and waits for its `listening on ADDR` line; the rest of
    /// stdout is drained on a thread so that the child never blocks on a full pipe. Panics if
    /// it cannot start or prints another first line.
    pub fn spawn_listening(cmd: &mut Command) -> (Proc, SocketAddr) {
        Proc::try_spawn_listening(cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Proc::spawn_listening`] for a caller that reports rather than panics, or retries (a
    /// restart on a port that may not be free yet).
    pub fn try_spawn_listening(cmd: &mut Command) -> anyhow::Result<(Proc, SocketAddr)> {
        let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let proc = Proc::new(child, cmd);
        let line = first_line_then_drain(stdout);
        match parse_listening(&line) {
            Some(addr) => Ok((proc, addr)),
            None => {
                bail!("{} printed {line:?}, not a `listening on ADDR` line (exit: {:?})", proc.program, proc.exited())
            }
        }
    }

    /// When dropped, SIGTERM first and SIGKILL only after `grace` (a server that flushes or
    /// hands over on SIGTERM gets to).
    pub fn terminate_on_drop(mut self, grace: Duration) -> Proc {
        self.grace = Some(grace);
        self
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process with SIGKILL and reaps it (a crash, as far as the others can tell).
    pub fn kill9(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Waits for the process to exit (after someone else signalled it) and reaps it.
    pub fn wait(&self) -> Option<ExitStatus> {
        self.child().wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(grace) = self.grace {
            terminate(child, grace);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM, then waits up to `grace` for the child to exit.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // Our own child, not reaped yet: the pid is still ours.
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the first line, then keeps draining stdout on a thread.
fn first_line_then_drain(stdout: ChildStdout) -> String {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line
}

/// `listening on 127.0.0.1:1234` → the address.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening on ")?.parse().ok()
}

/// Where a started process's stdout or stderr goes.
#[derive(Clone, Debug, Default)]
pub enum Output {
    #[default]
    Null,
    /// The test's own (shown when a test fails).
    Inherit,
    /// Appended to this file, created if missing.
    File(PathBuf),
}

impl Output {
    fn stdio(&self) -> anyhow::Result<Stdio> {
        Ok(match self {
            Output::Null => Stdio::null(),
            Output::Inherit => Stdio::inherit(),
            Output::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .into(),
        })
    }
}

/// How a harness starts one of the workspace's servers, the same way again after a restart:
/// the binary, its environment, where its output goes and how it is stopped.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The workspace binary's name (`gateway`, `control-api`).
    name: &'static str,
    /// Another build of it (a release build, an experiment) instead of [`crate::paths::bin`].
    bin: Option<PathBuf>,
    env: Vec<(String, String)>,
    stdout: Output,
    stderr: Output,
    grace: Option<Duration>,
}

impl Launch {
    /// The workspace's build of `name`; stdout and stderr go nowhere; SIGKILL on drop.
    pub fn new(name: &'static str) -> Launch {
        Launch { name, bin: None, env: Vec::new(), stdout: Output::Null, stderr: Output::Null, grace: None }
    }

    /// Runs this binary instead of the workspace's build.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Launch {
        self.bin = Some(bin.into());
        self
    }

    /// Sets an environment variable (a later value for the same name wins).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Launch {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn stdout(mut self, to: Output) -> Launch {
        self.stdout = to;
        self
    }

    pub fn stderr(mut self, to: Output) -> Launch {
        self.stderr = to;
        self
    }

    /// See [`Proc::terminate_on_drop`].
    pub fn terminate_on_drop(mut self, grace: Duration) -> Launch {
        self.grace = Some(grace);
        self
    }

    /// The command: the binary with `args`, the environment and the outputs.
    fn command<I, S>(&self, args: I) -> anyhow::Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = self.bin.clone().unwrap_or_else(|| crate::paths::bin(self.name));
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(self.stdout.stdio()?).stderr(self.stderr.stdio()?);
        Ok(cmd)
    }

    /// Starts the binary with `args`.
    pub fn spawn<I, S>(&self, args: I) -> anyhow::Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Ok(self.with_grace(Proc::try_spawn(&mut self.command(args)?)?))
    }

    /// Starts the binary with `args` and waits for its `listening on ADDR` line.
    pub fn spawn_listening<I, S>(&self, args: I) -> anyhow::Result<(Proc, SocketAddr)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (proc, addr) = Proc::try_spawn_listening(&mut self.command(args)?)?;
        Ok((self.with_grace(proc), addr))
    }

    fn with_grace(&self, proc: Proc) -> Proc {
        match self.grace {
            Some(grace) => proc.terminate_on_drop(grace),
            None => proc,
        }
    }
}

/// A port free at the time of the call (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The port of a `http://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port")
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
