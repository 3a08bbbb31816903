//! The HTTP server: binds the listener, runs the I/O runtime (tokio, on a thread of its own) and
//! accepts connections (hyper, HTTP/1.1 keep-alive) for an opened [`Engine`], whose own tasks it
//! starts on the same runtime.
//!
//! Limits that hold against hostile clients: a request head above `max_header_bytes` gets `431`
//! (JSON up to twice the limit; past that hyper's read buffer is full and hyper itself answers a
//! bare `431` and closes); headers must arrive within `header_timeout`, which is also how long a
//! keep-alive connection may idle; a body must arrive within `body_timeout` (`408`, see `hook`).

use std::convert::Infallible;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::config::AppConfig;
use crate::http::{routes, stats};
use crate::runtime::Engine;

/// hyper refuses to shrink its read buffer below this (`MINIMUM_MAX_BUFFER_SIZE`).
const MIN_READ_BUFFER: usize = 8192;
/// How long open connections may finish their current request once the server stops.
const GRACE: Duration = Duration::from_secs(2);

/// The errors of the HTTP subsystem.
#[derive(Debug)]
pub enum HttpError {
    Bind { addr: String, source: std::io::Error },
    Runtime(std::io::Error),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {addr}: the address is already in use (is another server running? pick another --port)")
            }
            HttpError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            HttpError::Runtime(e) => write!(f, "cannot start the I/O runtime: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A running HTTP server. `stop` closes it; the engine's shutdown is the caller's (drain first,
/// so that waiting clients are answered, then `stop`, then `Engine::close`).
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<Notify>,
    io: JoinHandle<()>,
}

/// A bound listener, not serving yet: binding has no other effect, so it goes first (before the
/// engine opens and recovers a journal).
pub struct HttpListener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    /// Binds `config`'s host and port.
    pub fn bind(config: &AppConfig) -> Result<HttpListener, HttpError> {
        let display = format!("{}:{}", config.host, config.port);
        let bind_err = |source| HttpError::Bind { addr: display.clone(), source };
        let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port).to_socket_addrs().map_err(bind_err)?.collect();
        let listener = std::net::TcpListener::bind(&addrs[..]).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(HttpListener { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl HttpServer {
    /// Serves `engine` (opened, see `Engine::open`) on `bound`, on a new I/O thread.
    pub fn start(bound: HttpListener, engine: Arc<Engine>) -> Result<HttpServer, HttpError> {
        let HttpListener { listener, addr } = bound;
        let cfg = &engine.config;
        let runtime = if cfg.io_threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.io_threads)
                .thread_name("warmslot-io")
                .enable_all()
                .build()
        }
        .map_err(HttpError::Runtime)?;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let io = std::thread::Builder::new()
            .name("warmslot-io".into())
            .spawn(move || {
                runtime.block_on(async move {
                    engine.spawn_tasks();
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, engine, stopped).await,
                        Err(e) => log::error!("cannot register the listener: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(HttpError::Runtime)?;
        Ok(HttpServer { addr, stop, io })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open connections finish their current request (at most 2 s), and
    /// stops the I/O runtime. Blocks until it has.
    pub fn stop(self) {
        self.stop.notify_one();
        let _ = self.io.join();
    }
}

/// Accepts connections until `stop` fires, then lets open connections finish their current
/// request (hyper's graceful shutdown) for at most `GRACE`.
async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: Arc<Notify>) {
    let permits = Arc::new(Semaphore::new(engine.config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let ticker = tokio::spawn(stats::tick_every_second(engine.clone()));
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // Backpressure: take a connection permit before accepting.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stopped => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let cfg = &engine.config;
        // hyper answers a bare 431 and closes once a head fills its read buffer; heads between
        // `max_header_bytes` and the buffer's size get the JSON 431 from `route`.
        let read_buffer = cfg.max_header_bytes.saturating_mul(2).max(MIN_READ_BUFFER);
        // The header timer runs from the moment hyper waits for a request head, so it bounds both
        // a slowloris head and an idle keep-alive connection.
        let mut builder = http1::Builder::new();
        builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout);
        builder.max_buf_size(read_buffer);
        let engine = engine.clone();
        let service = service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, Infallible>(routes::route(req, &engine).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    ticker.abort();
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, KeySpec, PipelineConfig};
    use crate::runtime::{
        run_slot, Backend, Begun, CommitNow, LoopEnd, LoopSettings, More, RunResult, SlotDied, WarmupReason,
    };
    use crate::state::{MemoryStore, StateStore};
    use bytes::Bytes;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// One HTTP/1.1 request on a fresh connection; returns (status, body).
    fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[test]
    fn serves_a_pipeline_end_to_end_on_loopback() {
        let mut p = PipelineConfig::new("count");
        p.key = KeySpec::Field("user".into());
        let config = AppConfig { port: 0, pipelines: vec![p], ..AppConfig::default() };
        let store = |_: &PipelineConfig| Ok(Arc::new(MemoryStore::default()) as Arc<dyn StateStore>);
        let engine = Engine::new(config, &store, None).unwrap();
        let bound = HttpListener::bind(&engine.config).unwrap();
        engine.open().unwrap();
        let server = HttpServer::start(bound, engine.clone()).unwrap();
        let addr = server.local_addr();
        assert_eq!(request(addr, "GET", "/healthz", "").0, 503, "no warm slot yet");

        // A slot in Rust: counts events per key in the committed state.
        struct Counter;
        impl Backend for Counter {
            fn commits_inline(&self) -> bool {
                true
            }
            fn run(
                &mut self,
                batch: &mut Vec<Begun>,
                _more: &mut More<'_>,
                done: &mut dyn FnMut(&mut Begun, RunResult),
                _commit_now: &mut CommitNow<'_>,
            ) -> Result<(), SlotDied> {
                for b in batch.iter_mut() {
                    let n: u64 = b.state.as_ref().map_or(0, |s| std::str::from_utf8(s).unwrap().parse().unwrap()) + 1;
                    let reply = Bytes::from(format!("{{\"n\":{n}}}"));
                    done(b, RunResult::Reply { reply, state: Some(Bytes::from(n.to_string())) });
                }
                Ok(())
            }
        }
        let p = engine.pipelines()[0].clone();
        p.slots.mark_warm(0, WarmupReason::Ahead, 1);
        let worker = std::thread::spawn(move || {
            let settings = LoopSettings { spin: Duration::ZERO, warm_from: Instant::now(), warm_at: Instant::now() };
            run_slot(&p, 0, &mut Counter, &settings)
        });
        assert_eq!(request(addr, "GET", "/healthz", "").0, 200);
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"a"}"#), (200, r#"{"n":1}"#.into()));
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"a"}"#), (200, r#"{"n":2}"#.into()));
        assert_eq!(request(addr, "POST", "/hooks/count", r#"{"user":"b"}"#), (200, r#"{"n":1}"#.into()));
        let (status, body) = request(addr, "POST", "/hooks/count", "{nope");
        assert_eq!(status, 400);
        assert!(body.contains("\"invalid_json\""), "{body}");
        assert_eq!(request(addr, "POST", "/hooks/other", "{}").0, 404);
        assert_eq!(request(addr, "GET", "/hooks/count", "").0, 405);
        let (_, metrics) = request(addr, "GET", "/metrics", "");
        assert!(metrics.contains("warmslot_requests_total{pipeline=\"count\",status=\"succeeded\"} 3"), "{metrics}");

        engine.drain(Duration::from_secs(1));
        server.stop();
        engine.close();
        assert!(matches!(worker.join().unwrap(), LoopEnd::Stopped));
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed after shutdown");
    }
}
