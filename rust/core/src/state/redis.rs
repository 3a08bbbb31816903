//! Cluster mode: per-key state in Redis, shared by every warmslot process that points at it.
//!
//! Within a process the lanes keep a key's events in order; across processes a lease lock
//! keeps them from running at once. `load` takes the lease (`SET lock token NX PX lease`, waiting
//! while another process holds it) and reads the state; `commit` writes the state and drops the
//! lease in one Lua script that first checks the token, so a process whose lease expired (its
//! pipeline overran the lease) cannot overwrite what the next holder committed. `release` drops the
//! lease without writing, for executions that fail or time out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Connection, Script};

use crate::config::PipelineConfig;
use crate::state::{ExecutionRecord, StateStore, StoreError};

/// A record as stored: `<http status> <status>\n<reply length>\n<reply><record JSON>`.
fn encode_record(r: &ExecutionRecord) -> Vec<u8> {
    let mut out = format!("{} {}\n{}\n", r.http_status, r.status, r.reply.len()).into_bytes();
    out.extend_from_slice(&r.reply);
    out.extend_from_slice(r.json.as_bytes());
    out
}

fn decode_record(id: &str, raw: &[u8]) -> Option<ExecutionRecord> {
    let mut parts = raw.splitn(3, |&b| b == b'\n');
    let head = std::str::from_utf8(parts.next()?).ok()?;
    let len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let rest = parts.next()?;
    let (http_status, status) = head.split_once(' ')?;
    let (reply, json) = (rest.get(..len)?, rest.get(len..)?);
    let json = String::from_utf8(json.to_vec()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    Some(ExecutionRecord {
        id: id.into(),
        key: v.get("key").and_then(|k| k.as_str()).map(Into::into),
        delivery: v.get("delivery_id").and_then(|k| k.as_str()).map(Into::into),
        received_unix: v.get("received_at").and_then(|k| k.as_f64()).unwrap_or(0.0),
        status: match status {
            "succeeded" => "succeeded",
            "timed_out" => "timed_out",
            _ => "failed",
        },
        http_status: http_status.parse().ok()?,
        reply: Bytes::copy_from_slice(reply),
        json,
    })
}

// Takes the lease and reads the state in one round trip: {1, state or false}, or {0, false}.
// Holding the lease already counts (a retry after a lost reply).
const ACQUIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('GET', KEYS[2])}
end
return {0, false}";

// KEYS[3] / ARGV[3..4], when given: the execution record, written with the state (PX ARGV[4]).
const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  if KEYS[3] then
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  end
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  return 2
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

// Claims a delivery id for an execution: false when claimed now, else the execution id that has it.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])";

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

/// A Redis server and a small pool of connections to it.
pub struct RedisDb {
    client: redis::Client,
    url: String,
    pool: Mutex<Vec<Connection>>,
    node: String,
    tokens: AtomicU64,
    acquire: Script,
    commit: Script,
    release: Script,
    claim: Script,
    /// How long execution records are kept (ms).
    records_ttl_ms: AtomicU64,
}

impl RedisDb {
    /// Connects to `url` (`redis://host:port/db`) and checks the server answers.
    pub fn open(url: &str) -> Result<Arc<RedisDb>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(format!("invalid redis URL {url:?}: {e}")))?;
        let mut conn = connect(&client).map_err(|e| StoreError(format!("cannot reach redis at {url}: {e}")))?;
        redis::cmd("PING").query::<String>(&mut conn).map_err(|e| StoreError(format!("redis at {url}: {e}")))?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(Arc::new(RedisDb {
            client,
            url: url.to_string(),
            pool: Mutex::new(vec![conn]),
            node: format!("{:x}-{:x}", std::process::id(), seed),
            tokens: AtomicU64::new(0),
            acquire: Script::new(ACQUIRE),
            commit: Script::new(COMMIT),
            release: Script::new(RELEASE),
            claim: Script::new(CLAIM),
            records_ttl_ms: AtomicU64::new(7 * 24 * 3600 * 1000),
        }))
    }

    /// How long execution records are kept (for repeated deliveries seen by other processes).
    pub fn set_records_ttl(&self, ttl: Duration) {
        self.records_ttl_ms.store(ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        connect(&self.client).map_err(err)
    }

    /// Runs `f` on a pooled connection. A pooled connection that turns out dead (server restarted,
    /// idle client killed) is dropped and `f` runs once more on a fresh one; every script here is
    /// safe to repeat (see `ACQUIRE` and `COMMIT`). Connections that errored are never reused.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap().pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = match f(&mut conn) {
            Ok(v) => v,
            Err(e) if was_pooled && (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() => {
                conn = self.connect()?;
                f(&mut conn).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        self.pool.lock().unwrap().push(conn);
        Ok(out)
    }

    /// The store of one pipeline; `lease` bounds how long one execution may hold a key.
    pub fn store(self: &Arc<Self>, pipeline: &str, lease: Duration) -> Arc<dyn StateStore> {
        Arc::new(RedisStore {
            db: self.clone(),
            prefix: format!("warmslot:{pipeline}"),
            lease,
            held: Mutex::new(HashMap::new()),
        })
    }
}

pub struct RedisStore {
    db: Arc<RedisDb>,
    prefix: String,
    lease: Duration,
    /// Key → the token of the lease this process holds on it (one execution per key at a time).
    held: Mutex<HashMap<String, String>>,
}

impl RedisStore {
    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.prefix)
    }

    fn state_key(&self, key: &str) -> String {
        format!("{}:state:{key}", self.prefix)
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:exec:{id}", self.prefix)
    }

    fn records_ttl_ms(&self) -> u64 {
        self.db.records_ttl_ms.load(Ordering::Relaxed)
    }

    /// Drops our lease on `key` if we still hold it (the script checks the token).
    fn release_lease(&self, key: &str, token: &str) {
        let lock = self.lock_key(key);
        let _ = self.db.with_conn(|c| self.db.release.key(&lock).arg(token).invoke::<i64>(c));
    }
}

impl StateStore for RedisStore {
    fn load(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let token = format!("{}-{}", self.db.node, self.db.tokens.fetch_add(1, Ordering::Relaxed));
        let (lock, state) = (self.lock_key(key), self.state_key(key));
        let lease_ms = self.lease.as_millis().max(1) as u64;
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            let (got, value): (i64, Option<Vec<u8>>) =
                self.db.with_conn(|c| self.db.acquire.key(&lock).key(&state).arg(&token).arg(lease_ms).invoke(c))?;
            if got == 1 {
                self.held.lock().unwrap().insert(key.to_string(), token);
                return Ok(value.map(Bytes::from));
            }
            if started.elapsed() > self.lease {
                return Err(StoreError(format!("key {key:?} stayed locked by another process for over {lease_ms} ms")));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    fn commit(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        self.commit_execution(Some(key), Some(value), None)
    }

    fn commit_execution(
        &self,
        key: Option<&str>,
        state: Option<Bytes>,
        record: Option<&ExecutionRecord>,
    ) -> Result<(), StoreError> {
        let ttl = self.records_ttl_ms();
        let (Some(key), Some(value)) = (key, state) else {
            if let Some(r) = record {
                self.record_outcome(r.clone());
            }
            return Ok(());
        };
        let Some(token) = self.held.lock().unwrap().remove(key) else {
            return Err(StoreError(format!("no lease held on key {key:?}")));
        };
        let (lock, state) = (self.lock_key(key), self.state_key(key));
        let record = record.map(|r| (self.record_key(&r.id), encode_record(r)));
        let outcome: Result<i64, StoreError> = self.db.with_conn(|c| {
            let mut call = self.db.commit.key(&lock);
            call.key(&state).arg(&token).arg(&value[..]);
            if let Some((k, v)) = &record {
                call.key(k).arg(&v[..]).arg(ttl);
            }
            call.invoke(c)
        });
        match outcome {
            Ok(1 | 2) => Ok(()),
            Ok(_) => Err(StoreError(format!(
                "the lease on key {key:?} expired before the commit (run longer than {} ms); nothing committed",
                self.lease.as_millis()
            ))),
            Err(e) => {
                // Do not leave the key locked for the rest of the lease.
                self.release_lease(key, &token);
                Err(e)
            }
        }
    }

    fn release(&self, key: &str) {
        if let Some(token) = self.held.lock().unwrap().remove(key) {
            self.release_lease(key, &token);
        }
    }

    fn keeps_records(&self) -> bool {
        true
    }

    fn record_outcome(&self, record: ExecutionRecord) {
        let (k, v, ttl) = (self.record_key(&record.id), encode_record(&record), self.records_ttl_ms());
        let _ = self.db.with_conn(|c| redis::cmd("SET").arg(&k).arg(&v[..]).arg("PX").arg(ttl).query::<()>(c));
    }

    fn record(&self, id: &str) -> Option<ExecutionRecord> {
        let k = self.record_key(id);
        let raw: Option<Vec<u8>> = self.db.with_conn(|c| redis::cmd("GET").arg(&k).query(c)).ok()?;
        decode_record(id, &raw?)
    }

    fn shares_deliveries(&self) -> bool {
        true
    }

    fn release_delivery(&self, delivery: &str, execution_id: &str) {
        let k = format!("{}:delivery:{delivery}", self.prefix);
        let _ = self.db.with_conn(|c| self.db.release.key(&k).arg(execution_id).invoke::<i64>(c));
    }

    fn claim_delivery(
        &self,
        delivery: &str,
        execution_id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let k = format!("{}:delivery:{delivery}", self.prefix);
        let ms = window.as_millis().max(1) as u64;
        let other: Option<String> = self.db.with_conn(|c| self.db.claim.key(&k).arg(execution_id).arg(ms).invoke(c))?;
        Ok(other.filter(|o| o != execution_id))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

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

    #[test]
    fn two_processes_never_hold_a_key_at_once_and_lose_no_update() {
        let server = RedisServer::start();
        // Two RedisDb handles stand for two warmslot processes sharing one Redis.
        let nodes: Vec<_> =
            (0..2).map(|_| RedisDb::open(&server.url).unwrap().store("p", Duration::from_secs(5))).collect();
        let handles: Vec<_> = nodes
            .into_iter()
            .map(|store| {
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let n: u64 =
                            store.load("k").unwrap().map_or(0, |b| std::str::from_utf8(&b).unwrap().parse().unwrap());
                        store.commit("k", Bytes::from((n + 1).to_string())).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let store = RedisDb::open(&server.url).unwrap().store("p", Duration::from_secs(5));
        assert_eq!(store.load("k").unwrap().unwrap(), Bytes::from("200"));
        store.release("k");
    }

    #[test]
    fn an_expired_lease_cannot_commit_and_release_frees_the_key() {
        let server = RedisServer::start();
        let db = RedisDb::open(&server.url).unwrap();
        let slow = db.store("p", Duration::from_millis(50));
        slow.load("k").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let other = db.store("p", Duration::from_secs(5));
        other.load("k").unwrap(); // the lease expired: the other process gets the key
        assert!(slow.commit("k", Bytes::from_static(b"late")).unwrap_err().0.contains("expired"));
        other.commit("k", Bytes::from_static(b"fresh")).unwrap();
        let third = db.store("p", Duration::from_secs(5));
        assert_eq!(third.load("k").unwrap().unwrap(), Bytes::from_static(b"fresh"));
        third.release("k");
        assert_eq!(other.load("k").unwrap().unwrap(), Bytes::from_static(b"fresh"), "release freed the key");
        other.release("k");
        assert!(RedisDb::open("redis://127.0.0.1:1/0").err().unwrap().0.contains("cannot reach redis"));
    }
}
