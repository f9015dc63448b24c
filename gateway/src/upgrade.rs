//! Zero-downtime binary upgrade and config change, on Pingora's socket hand-over.
//!
//! `gateway --upgrade --config FILE` validates its config and activates its bundle (the
//! persisted last-known-good, or `bundle.file`) first; only a process that will serve takes
//! over. It then sends `SIGQUIT` to the running gateway named by `pid_file`, which hands its
//! listening sockets over `upgrade_sock` (Pingora), keeps accepting on them for Pingora's fixed
//! 5 s while the new process starts accepting too, then stops accepting and drains its
//! in-flight requests. The new process writes its own PID to `pid_file` once it holds the sockets,
//! and under systemd tells it that it is the service's main process now ([`notify_systemd`]).
//!
//! [`Phases`] follows Pingora's execution phase, so `/readyz` says `draining` in a process that
//! is handing over or shutting down, and a load balancer stops sending to it.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;

/// Why a process cannot take over from the running one.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no bundle is active (no last-known-good in `bundle.cache_dir` and no `bundle.file`): refusing to take over from a serving gateway")]
    NothingToServe,
    #[error("cannot read the running gateway's PID from {path}: {message}")]
    Pid { path: String, message: String },
    #[error("cannot signal the running gateway (PID {pid}): {message}")]
    Signal { pid: i32, message: String },
    #[error("cannot write {path}: {message}")]
    WritePid { path: String, message: String },
}

/// Asks the gateway whose PID is in `pid_file` to hand over its sockets and drain (SIGQUIT).
pub fn ask_to_hand_over(pid_file: &Path) -> Result<i32, UpgradeError> {
    let path = pid_file.display().to_string();
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| UpgradeError::Pid { path: path.clone(), message: e.to_string() })?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| UpgradeError::Pid { path, message: format!("`{}` is not a process id", text.trim()) })?;
    same_program(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT)
        .map_err(|e| UpgradeError::Signal { pid, message: e.to_string() })?;
    Ok(pid)
}

/// A PID file can outlive its process, and the PID be reused: only a process running a program
/// of this one's name (`gateway`) is sent SIGQUIT.
fn same_program(pid: i32) -> Result<(), UpgradeError> {
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    let signal_err = |message: String| UpgradeError::Signal { pid, message };
    let cmdline =
        std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| signal_err(format!("no such process: {e}")))?;
    let argv0 = cmdline.split(|b| *b == 0).next().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
    let ours = std::env::current_exe().ok().and_then(|p| name(&p));
    if name(Path::new(&argv0)) != ours {
        return Err(signal_err(format!("it runs `{argv0}`, not this program: a stale PID file?")));
    }
    Ok(())
}

/// Writes this process's PID to `pid_file` atomically (a temp file renamed over it).
pub fn write_pid(pid_file: &Path) -> Result<(), UpgradeError> {
    let err =
        |e: std::io::Error| UpgradeError::WritePid { path: pid_file.display().to_string(), message: e.to_string() };
    let tmp = pid_file.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(err)?;
    std::fs::rename(&tmp, pid_file).map_err(err)
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is ready and is now the
/// service's main process, so that a reload's new process replaces the old one in its eyes.
/// Nothing happens outside systemd (no `NOTIFY_SOCKET`).
pub fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(message.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The process's phase as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting = 0,
    Running = 1,
    /// Handing its sockets to a new process, or shutting down: in-flight requests finish here.
    Draining = 2,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Draining => "draining",
        }
    }
}

/// The latest phase, written by [`PhaseWatch`] and read by the admin listener.
#[derive(Debug, Default)]
pub struct Phases(AtomicU8);

impl Phases {
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            _ => Phase::Draining,
        }
    }

    fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }
}

fn phase_of(p: &ExecutionPhase) -> Phase {
    match p {
        ExecutionPhase::Setup | ExecutionPhase::Bootstrap | ExecutionPhase::BootstrapComplete => Phase::Starting,
        ExecutionPhase::Running => Phase::Running,
        _ => Phase::Draining,
    }
}

/// Follows Pingora's execution phase into [`Phases`].
pub struct PhaseWatch {
    pub phases: Arc<Phases>,
    pub watch: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for PhaseWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.watch.lock().ok().and_then(|mut w| w.take()) else { return };
        // Services start once the server runs.
        self.phases.set(Phase::Running);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.phases.set(Phase::Draining);
                        return;
                    }
                }
                phase = rx.recv() => match phase {
                    Ok(p) => self.phases.set(phase_of(&p)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handing_over_and_shutting_down_read_as_draining() {
        assert_eq!(phase_of(&ExecutionPhase::Running), Phase::Running);
        assert_eq!(phase_of(&ExecutionPhase::Bootstrap), Phase::Starting);
        for p in [
            ExecutionPhase::GracefulUpgradeTransferringFds,
            ExecutionPhase::GracefulUpgradeCloseTimeout,
            ExecutionPhase::GracefulTerminate,
            ExecutionPhase::ShutdownStarted,
        ] {
            assert_eq!(phase_of(&p), Phase::Draining, "{p:?}");
        }
    }

    #[test]
    fn a_pid_file_naming_another_program_is_not_signalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut other = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        let pid_file = dir.path().join("gw.pid");
        std::fs::write(&pid_file, format!("{}\n", other.id())).expect("write");
        let e = ask_to_hand_over(&pid_file).expect_err("sleep is not a gateway");
        assert!(e.to_string().contains("stale PID file"), "{e}");
        assert!(other.try_wait().expect("wait").is_none(), "sleep was not signalled");
        let _ = other.kill();
        std::fs::write(&pid_file, "garbage").expect("write");
        assert!(ask_to_hand_over(&pid_file).expect_err("not a pid").to_string().contains("not a process id"));
    }
}
