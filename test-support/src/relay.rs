//! A TCP relay on loopback that a test can cut: every connection through it is reset and new
//! ones are refused until it is restored. It stands between a program and a server (a
//! control-api replica and its PostgreSQL) to cut the link as a network partition, a firewall
//! or a database failover would, without touching either process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running relay; stops accepting when dropped.
pub struct Relay {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays connections on an ephemeral loopback port to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let (cut, open, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::default());
        let relay = Relay { addr, cut: cut.clone(), open: open.clone(), stop: Arc::clone(&stop) };
        std::thread::spawn(move || accept(listener, target, cut, open, stop));
        relay
    }

    /// Resets every relayed connection and refuses new ones (closed as soon as accepted).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default() {
            // SO_LINGER 0 would send an RST; a shutdown ends both directions at once, which the
            // peers see as the connection closing under them.
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Relays again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            continue;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
        if let Ok(mut o) = open.lock() {
            o.retain(|s| s.peer_addr().is_ok());
            o.extend([client.try_clone(), server.try_clone()].into_iter().flatten());
        }
        std::thread::spawn(move || pipe(client, server));
        std::thread::spawn(move || pipe(s2, c2));
    }
}

/// Copies `from` into `to` until either ends, then ends both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
