//! The HTTP server under the router: our own accept loop, so that idle,
//! slow or too many clients cannot lock the others out.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tower::ServiceExt;
use tracing::{debug, error};

/// Connections the kernel completes and holds for us while all
/// `max_connections` are taken (Linux caps it at `net.core.somaxconn`).
/// Beyond the backlog, a client's handshake is dropped and retried after
/// seconds, so it must not be smaller than the crowd we expect to queue;
/// std and tokio use 128.
const LISTEN_BACKLOG: u32 = 1024;

/// The pause after an accept that failed for lack of resources (file
/// descriptors, memory): they come back only as connections close, so
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// `serve --max-connections`, `--header-read-timeout`, `--keep-alive-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// From a request's first byte to the end of its headers.
    pub header_read_timeout: Duration,
    /// From a connection's opening, or its last answer, to the first byte
    /// of its next request.
    pub keep_alive_timeout: Duration,
}

/// Listens on `address`, with room in the backlog for clients waiting for a
/// free connection.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restarted service binds at once,
    // despite its predecessor's connections in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves; then refuses new
/// connections, closes idle ones, lets the requests in progress finish,
/// and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // `shutdown` first: its first poll installs the signal handlers,
            // which must be in place before any request is answered; and
            // once it has come, no connection is accepted.
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        if let Some((stream, slot)) = accepted {
            let watcher = graceful.watcher();
            tokio::spawn(serve_connection(stream, app.clone(), limits, watcher, slot));
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection, once a slot is free; `None` when accepting failed.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The slot before the connection: while none is free, clients wait in
    // the kernel's backlog at no cost to us, instead of each taking a file
    // descriptor here. `slots` is never closed, so this never fails.
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, slot)),
        Err(error) if is_the_clients_doing(&error) => {
            debug!(%error, "a connection was lost before it was accepted");
            None
        }
        Err(error) => {
            error!(%error, "cannot accept connections; trying again shortly");
            sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// Whether an accept failed because of that one client (it hung up before
/// we took its connection), not for lack of resources.
fn is_the_clients_doing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Where a connection stands, which sets its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request since then: just opened, or answered.
    Idle(Instant),
    /// Receiving a request's headers since their first byte.
    ReadingHeaders(Instant),
    /// Handling a request, which `--request-timeout` bounds.
    Handling,
}

impl Phase {
    fn deadline(self, limits: &ConnectionLimits) -> Option<Instant> {
        match self {
            Self::Idle(since) => Some(since + limits.keep_alive_timeout),
            Self::ReadingHeaders(since) => Some(since + limits.header_read_timeout),
            Self::Handling => None,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    watcher: Watcher,
    _slot: OwnedSemaphorePermit,
) {
    let (phase, mut phases) = watch::channel(Phase::Idle(Instant::now()));
    let phase = Arc::new(phase);
    let handling = phase.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        handling.send_replace(Phase::Handling);
        let (app, handling) = (app.clone(), handling.clone());
        async move {
            let response = app.oneshot(request).await;
            handling.send_replace(Phase::Idle(Instant::now()));
            response
        }
    });
    // The deadlines are ours: hyper's header timer (1.x) also runs while a
    // connection waits for its next request, which would close keep-alive
    // connections at the header limit.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(Watched { stream, phase }), service);
    tokio::select! {
        served = watcher.watch(connection) => {
            if let Err(error) = served {
                debug!(%error, "connection ended with an error");
            }
        }
        () = overstayed(&mut phases, &limits) => {
            debug!("closed a connection left idle, or sending its headers too slowly");
        }
    }
}

/// Resolves once the connection has been idle, or receiving one request's
/// headers, for longer than the limits allow.
async fn overstayed(phases: &mut watch::Receiver<Phase>, limits: &ConnectionLimits) {
    loop {
        let deadline = phases.borrow_and_update().deadline(limits);
        let expired = async {
            match deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => return,
            changed = phases.changed() => {
                if changed.is_err() {
                    // The connection is gone, and with it what could expire.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The connection's socket, which notes when a request's first bytes
/// arrive: from then on, the header deadline applies.
struct Watched {
    stream: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.send_if_modified(|phase| match phase {
                Phase::Idle(_) => {
                    *phase = Phase::ReadingHeaders(Instant::now());
                    true
                }
                Phase::ReadingHeaders(_) | Phase::Handling => false,
            });
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
