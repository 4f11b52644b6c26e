//! A TCP proxy that injects faults between the service and a dependency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Accept connections and swallow their bytes; never answer, never reset (a dead network
    /// path or a frozen peer).
    BlackHole,
    /// Forward every chunk after a delay.
    Latency(Duration),
    /// Close every connection with a TCP reset, old and new.
    Reset,
}

#[derive(Debug)]
struct State {
    mode: AtomicU8,
    latency_ms: AtomicU64,
    generation: AtomicU64,
}

impl State {
    fn fault(&self) -> Fault {
        match self.mode.load(Ordering::SeqCst) {
            0 => Fault::Pass,
            1 => Fault::BlackHole,
            2 => Fault::Latency(Duration::from_millis(
                self.latency_ms.load(Ordering::SeqCst),
            )),
            _ => Fault::Reset,
        }
    }
}

/// A proxy from a free loopback port to `127.0.0.1:target`, on a thread of its own.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Starts forwarding to `target` (port on 127.0.0.1).
    pub fn start(target: u16) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            mode: AtomicU8::new(0),
            latency_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        });
        let shared = state.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(handle(client, target, shared.clone()));
            }
        });
        FaultProxy {
            port,
            state,
            _runtime: runtime,
        }
    }

    /// The port to point the service at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the fault for existing and new connections.
    pub fn set(&self, fault: Fault) {
        let (mode, latency) = match fault {
            Fault::Pass => (0, 0),
            Fault::BlackHole => (1, 0),
            Fault::Latency(delay) => (2, u64::try_from(delay.as_millis()).unwrap()),
            Fault::Reset => (3, 0),
        };
        self.state.latency_ms.store(latency, Ordering::SeqCst);
        self.state.mode.store(mode, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn handle(client: TcpStream, target: u16, state: Arc<State>) {
    if state.fault() == Fault::Reset {
        reset(client);
        return;
    }
    let upstream = loop {
        match state.fault() {
            Fault::BlackHole => tokio::time::sleep(Duration::from_millis(50)).await,
            Fault::Reset => return reset(client),
            _ => match TcpStream::connect(("127.0.0.1", target)).await {
                Ok(upstream) => break upstream,
                Err(_) => return reset(client),
            },
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = tokio::spawn(pump(client_read, upstream_write, state.clone()));
    let down = tokio::spawn(pump(upstream_read, client_write, state.clone()));
    let _ = tokio::join!(up, down);
}

/// Copies one direction, applying the current fault to every chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Wake up on a mode change so Reset reaches idle connections too.
            _ = wait_for_reset(&state) => Ok(usize::MAX),
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(usize::MAX) => {
                if let Ok(stream) = from.reunite(to) {
                    reset(stream);
                }
                return;
            }
            Ok(n) => n,
        };
        match state.fault() {
            Fault::Pass => {}
            Fault::BlackHole => continue,
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::Reset => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_for_reset(state: &State) {
    loop {
        if state.fault() == Fault::Reset {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reset(stream: TcpStream) {
    // Zero linger turns close() into an RST.
    let _ = stream.set_zero_linger();
    drop(stream);
}
