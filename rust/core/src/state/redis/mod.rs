//! Cluster mode: per-key state in Redis, shared by every warmslot process that points at it.
//!
//! Within a process the lanes keep a key's events in order; across processes a lease lock
//! keeps them from running at once. `load` takes the lease (`SET lock token NX PX lease`, waiting
//! while another process holds it) and reads the state; `commit` writes the state and drops the
//! lease in one Lua script that first checks the token, so a process whose lease expired (its
//! pipeline overran the lease) cannot overwrite what the next holder committed. `release` drops the
//! lease without writing, for executions that fail or time out.
//!
//! Async (`202`) events are journaled in Redis before their `202` (see `journal`): the same
//! `COMMIT` script writes a succeeded execution's state and record and removes its journal entry,
//! all or nothing, and refuses (writing nothing) when another process has taken the entry over.
//! A process that starts takes over the entries of dead processes and runs them (see `recovery`).
//!
//! The modules: `scripts` (the per-key Lua scripts), `store` (the per-pipeline `StateStore`),
//! `journal` (the journal and its group-commit backend) and `recovery` (heartbeats, and taking
//! over a dead process's journal entries).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Connection, Script};

use crate::config::PipelineConfig;
use crate::state::group::GroupWriter;
use crate::state::{StateStore, StoreError};

mod journal;
mod recovery;
mod scripts;
mod store;

use journal::{JournalKeys, RedisWriter};
use recovery::Heartbeat;
use scripts::{ACQUIRE, CLAIM, COMMIT, RELEASE};
pub use store::RedisStore;

/// Connect, read and write timeout of every Redis call.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one execution of `pipeline` may hold a key: past its deadline (so only a hung run
/// loses the lease), or 60 s for pipelines without a timeout.
pub fn lease_for(pipeline: &PipelineConfig) -> Duration {
    pipeline.timeout.map_or(Duration::from_secs(60), |t| t + Duration::from_secs(5))
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

/// Opens a connection with `IO_TIMEOUT` on connect, reads and writes. Every connection, the first
/// pooled one included, comes from here: redis-rs applies the connect timeout during setup only,
/// so a Redis that stops answering would otherwise block a commit (and its slot) forever.
fn connect(client: &redis::Client) -> redis::RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// A Redis client and a small pool of connections, shared by the store and its threads.
struct Conns {
    client: redis::Client,
    pool: Mutex<Vec<Connection>>,
}

impl Conns {
    /// Runs `f` on a pooled connection. A pooled connection that turns out dead (server restarted,
    /// idle client killed) is dropped and `f` runs once more on a fresh one; every script here is
    /// safe to repeat (see `ACQUIRE`, `COMMIT` and the journal's). Connections that errored are
    /// never reused.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(&self.client).map_err(err)?,
        };
        let out = match f(&mut conn) {
            Ok(v) => v,
            Err(e) if was_pooled && (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() => {
                conn = connect(&self.client).map_err(err)?;
                f(&mut conn).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        Ok(out)
    }
}

/// A Redis server, a small pool of connections to it, and this process's node in it: its
/// heartbeat and its journal writer.
pub struct RedisDb {
    conns: Arc<Conns>,
    url: String,
    node: String,
    tokens: AtomicU64,
    acquire: Script,
    commit: Script,
    release: Script,
    claim: Script,
    /// How long execution records are kept (ms).
    records_ttl_ms: AtomicU64,
    writer: journal::Writer,
    heartbeat: Heartbeat,
    /// Nodes whose journal entries were looked at during recovery: dead (true) or alive.
    verdicts: Mutex<HashMap<String, bool>>,
}

impl Drop for RedisDb {
    fn drop(&mut self) {
        self.close();
    }
}

impl RedisDb {
    /// Connects to `url` (`redis://host:port/db`), checks the server answers, and starts this
    /// process's node: its heartbeat and its journal writer.
    pub fn open(url: &str) -> Result<Arc<RedisDb>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(format!("invalid redis URL {url:?}: {e}")))?;
        let mut conn = connect(&client).map_err(|e| StoreError(format!("cannot reach redis at {url}: {e}")))?;
        redis::cmd("PING").query::<String>(&mut conn).map_err(|e| StoreError(format!("redis at {url}: {e}")))?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let node = format!("{:x}-{:x}", std::process::id(), seed);
        let conns = Arc::new(Conns { client, pool: Mutex::new(vec![conn]) });
        let writer = GroupWriter::start("warmslot-redis-journal", RedisWriter::new(conns.clone(), node.clone()))?;
        let heartbeat = Heartbeat::start(conns.clone(), &node)?;
        Ok(Arc::new(RedisDb {
            conns,
            url: url.to_string(),
            node,
            tokens: AtomicU64::new(0),
            acquire: Script::new(ACQUIRE),
            commit: Script::new(COMMIT),
            release: Script::new(RELEASE),
            claim: Script::new(CLAIM),
            records_ttl_ms: AtomicU64::new(7 * 24 * 3600 * 1000),
            writer,
            heartbeat,
            verdicts: Mutex::new(HashMap::new()),
        }))
    }

    /// How long execution records are kept (for repeated deliveries seen by other processes).
    pub fn set_records_ttl(&self, ttl: Duration) {
        self.records_ttl_ms.store(ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn with_conn<T>(&self, f: impl FnMut(&mut Connection) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        self.conns.with_conn(f)
    }

    /// Waits until every journal entry and outcome sent so far is written.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// This process runs nothing more from this Redis: writes what is pending and deletes the
    /// heartbeat, so another process that starts may take over its unfinished journal entries
    /// (events stopped by a shutdown) at once. Called at shutdown and on drop.
    pub fn close(&self) {
        self.flush();
        self.heartbeat.stop(true);
    }

    /// Stops the heartbeat as a SIGKILL would: the key stays until it expires.
    #[cfg(test)]
    pub(crate) fn halt_heartbeat(&self) {
        self.heartbeat.stop(false);
    }

    /// The store of one pipeline; `lease` bounds how long one execution may hold a key.
    pub fn store(self: &Arc<Self>, pipeline: &str, lease: Duration) -> Arc<dyn StateStore> {
        let prefix = format!("warmslot:{pipeline}");
        Arc::new(RedisStore {
            db: self.clone(),
            journal: Arc::new(JournalKeys::new(&prefix)),
            prefix,
            lease,
            held: Mutex::new(HashMap::new()),
            journaled: Arc::new(Mutex::new(HashSet::new())),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;

    /// A private redis-server on a free loopback port, stopped on drop.
    pub(crate) struct RedisServer {
        child: Child,
        pub url: String,
    }

    impl RedisServer {
        pub(crate) fn start() -> RedisServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed for these tests (apt-get install -y redis-server)");
            let url = format!("redis://127.0.0.1:{port}/0");
            let deadline = Instant::now() + Duration::from_secs(10);
            while RedisDb::open(&url).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            RedisServer { child, url }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn a_hung_redis_times_out_on_the_first_pooled_connection() {
        let server = RedisServer::start();
        let db = RedisDb::open(&server.url).unwrap(); // pools its first connection
        let store = db.store("hung", Duration::from_secs(5));
        let signal = |sig: &str| {
            let ok = Command::new("kill").args([sig, &server.child.id().to_string()]).status().unwrap().success();
            assert!(ok, "kill {sig}");
        };
        signal("-STOP"); // the server stops answering but keeps the connection open
        let started = Instant::now();
        let result = store.load("k");
        let waited = started.elapsed();
        signal("-CONT");
        assert!(result.is_err(), "a frozen redis must fail the call");
        assert!(waited >= IO_TIMEOUT - Duration::from_millis(100), "{waited:?}");
        assert!(waited < IO_TIMEOUT * 2 + Duration::from_secs(1), "timed out after {waited:?}");
    }
}
