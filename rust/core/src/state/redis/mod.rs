//! Cluster mode: per-key state in Redis, shared by every warmslot process that points at it.
//!
//! Within a process the lanes keep a key's events in order; across processes a lease lock
//! keeps them from running at once. `load` takes the lease (`SET lock token NX PX lease`, waiting
//! while another process holds it) and reads the state; `commit` writes the state and drops the
//! lease in one Lua script that first checks the token, so a process whose lease expired (its
//! pipeline overran the lease) cannot overwrite what the next holder committed. `release` drops the
//! lease without writing, for executions that fail or time out.
//!
//! Async (`202`) events are journaled in Redis before their `202` (see [`journal`]): the same
//! `COMMIT` script writes a succeeded execution's state and record and removes its journal entry,
//! all or nothing, and refuses (writing nothing) when another process has taken the entry over.
//! A process that starts takes over the entries of dead processes and runs them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use redis::{Connection, Script};

use crate::config::PipelineConfig;
use crate::state::{ExecutionRecord, JournalEntry, Journaled, StateStore, StoreError};

mod journal;

use journal::{Heartbeat, JournalKeys, OutcomeWrite, Write};

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

// Commits an execution. KEYS: the key's lock and state, the record, the journal and its owners.
// ARGV: [1] the lease token ('' when no state is written), [2] the state, [3] the record ('' when
// none), [4] the record's expiry (ms), [5] the execution id, [6] this node when the execution is
// journaled here ('' when not: then its entry is neither checked nor removed).
// Returns 1: committed; 2: committed already (a repeat after a lost reply: the record, or without
// one the state, is already the one given); 0: the lease expired, nothing written; 3: another
// process took the journal entry over, nothing written.
const COMMIT: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  return 2
end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[5], ARGV[5]) ~= ARGV[6] then
  return 3
end
if ARGV[1] ~= '' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    if ARGV[3] == '' and redis.call('GET', KEYS[2]) == ARGV[2] then
      return 2
    end
    return 0
  end
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
if ARGV[6] ~= '' then
  redis.call('HDEL', KEYS[4], ARGV[5])
  redis.call('HDEL', KEYS[5], ARGV[5])
end
return 1";

/// One call of `COMMIT`.
struct CommitCall<'a> {
    /// The key's lock and state keys, the lease token and the new state.
    lease: Option<(String, String, &'a str, &'a [u8])>,
    /// The record's key and the encoded record.
    record: Option<(&'a str, &'a [u8])>,
    ttl_ms: u64,
    id: &'a str,
    journal: &'a JournalKeys,
    /// This node, when the execution is journaled here: its entry must still be ours.
    node: Option<&'a str>,
}

impl CommitCall<'_> {
    fn invoke(&self, script: &Script, c: &mut Connection) -> redis::RedisResult<i64> {
        let mut call = script.prepare_invoke();
        let (lock, state, token, value) = match &self.lease {
            Some((lock, state, token, value)) => (lock.as_str(), state.as_str(), *token, *value),
            None => ("", "", "", &b""[..]),
        };
        let (record_key, record) = self.record.unwrap_or(("", b""));
        call.key(lock).key(state).key(record_key).key(&self.journal.entries).key(&self.journal.owners);
        call.arg(token).arg(value).arg(record).arg(self.ttl_ms).arg(self.id).arg(self.node.unwrap_or(""));
        call.invoke(c)
    }
}

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
    writes: Sender<Write>,
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
        let (writes, queue) = crossbeam_channel::unbounded();
        let (writer_conns, writer_node) = (conns.clone(), node.clone());
        std::thread::Builder::new()
            .name("warmslot-redis-journal".into())
            .spawn(move || journal::write_groups(writer_conns, writer_node, queue))
            .map_err(|e| StoreError(format!("cannot start the journal thread: {e}")))?;
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
            writes,
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
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.writes.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
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

pub struct RedisStore {
    db: Arc<RedisDb>,
    prefix: String,
    journal: Arc<JournalKeys>,
    lease: Duration,
    /// Key → the token of the lease this process holds on it (one execution per key at a time).
    held: Mutex<HashMap<String, String>>,
    /// Executions whose journal entry this process owns (journaled here, or taken over) and whose
    /// outcome is not written yet: their commit writes only while the entry is still ours.
    journaled: Arc<Mutex<HashSet<Box<str>>>>,
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

    fn journaled(&self) -> std::sync::MutexGuard<'_, HashSet<Box<str>>> {
        self.journaled.lock().unwrap_or_else(|e| e.into_inner())
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
        let id = record.map_or("", |r| &*r.id);
        let journaled = record.is_some() && self.journaled().contains(id);
        let lease = match (key, &state) {
            (Some(key), Some(value)) => {
                let Some(token) = self.held.lock().unwrap().remove(key) else {
                    return Err(StoreError(format!("no lease held on key {key:?}")));
                };
                Some((key, token, value))
            }
            _ => None,
        };
        let record_key = record.map(|r| self.record_key(&r.id));
        let encoded = record.map(encode_record);
        let call = CommitCall {
            lease: lease
                .as_ref()
                .map(|(key, token, value)| (self.lock_key(key), self.state_key(key), token.as_str(), &value[..])),
            record: record_key.as_deref().zip(encoded.as_deref()),
            ttl_ms: self.records_ttl_ms(),
            id,
            journal: &self.journal,
            node: journaled.then_some(self.db.node.as_str()),
        };
        let outcome = self.db.with_conn(|c| call.invoke(&self.db.commit, c));
        let release = || {
            if let Some((key, token, _)) = &lease {
                // Do not leave the key locked for the rest of the lease.
                self.release_lease(key, token);
            }
        };
        match outcome {
            Ok(1 | 2) => {
                if journaled {
                    self.journaled().remove(id);
                }
                Ok(())
            }
            Ok(3) => {
                release();
                Err(StoreError(format!(
                    "execution {id} was taken over by another process (this one's heartbeat in Redis lapsed for \
                     over {} s), which runs it; nothing committed here",
                    journal::HEARTBEAT_TTL.as_secs()
                )))
            }
            Ok(_) => Err(StoreError(format!(
                "the lease on key {:?} expired before the commit (run longer than {} ms); nothing committed",
                key.unwrap_or(""),
                self.lease.as_millis()
            ))),
            Err(e) => {
                release();
                Err(e)
            }
        }
    }

    fn release(&self, key: &str) {
        if let Some(token) = self.held.lock().unwrap().remove(key) {
            self.release_lease(key, &token);
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn journal(&self, entry: JournalEntry, done: Journaled) {
        let (id, encoded) = (entry.id.clone(), journal::encode_entry(&entry));
        let journaled = self.journaled.clone();
        let remembered = id.clone();
        let done: Journaled = Box::new(move |result| {
            if result.is_ok() {
                journaled.lock().unwrap_or_else(|e| e.into_inner()).insert(remembered);
            }
            done(result);
        });
        let write = Write::Journal { keys: self.journal.clone(), id, entry: encoded, done };
        if let Err(e) = self.db.writes.send(write) {
            if let Write::Journal { done, .. } = e.into_inner() {
                done(Err(StoreError("the journal writer has stopped".into())));
            }
        }
    }

    fn record_outcome(&self, record: ExecutionRecord) {
        let journaled = self.journaled().remove(&record.id);
        let _ = self.db.writes.send(Write::Outcome(OutcomeWrite {
            keys: self.journal.clone(),
            record_key: self.record_key(&record.id),
            record: encode_record(&record),
            ttl_ms: self.records_ttl_ms(),
            listed_in: (record.status != "succeeded").then(|| format!("{}:{}", self.prefix, record.status)),
            id: record.id,
            journaled,
        }));
    }

    fn list(&self, status: &str, limit: usize) -> Vec<String> {
        if limit == 0 || !matches!(status, "failed" | "timed_out") {
            return Vec::new(); // succeeded executions are listed by the process that ran them
        }
        let listed_in = format!("{}:{status}", self.prefix);
        let ids: Vec<String> = self
            .db
            .with_conn(|c| redis::cmd("ZREVRANGE").arg(&listed_in).arg(0).arg(limit as isize - 1).query(c))
            .unwrap_or_default();
        if ids.is_empty() {
            return Vec::new();
        }
        // One round trip for all the records (`MGET`), not one per id.
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let raws: Vec<Option<Vec<u8>>> =
            self.db.with_conn(|c| redis::cmd("MGET").arg(&keys).query(c)).unwrap_or_default();
        ids.iter()
            .zip(raws)
            .filter_map(|(id, raw)| decode_record(id, &raw?))
            .filter(|r| r.status == status)
            .map(|r| r.json)
            .collect()
    }

    fn flush(&self) {
        self.db.flush();
    }

    fn close(&self) {
        self.db.close();
    }

    fn record(&self, id: &str) -> Option<ExecutionRecord> {
        let k = self.record_key(id);
        let raw: Option<Vec<u8>> = self.db.with_conn(|c| redis::cmd("GET").arg(&k).query(c)).ok()?;
        decode_record(id, &raw?)
    }

    fn unfinished(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let entries = journal::take_over(
            &self.db.conns,
            &self.db.node,
            &self.journal,
            &|key| self.lock_key(key),
            &self.db.verdicts,
        )?;
        self.journaled().extend(entries.iter().map(|e| e.id.clone()));
        Ok(entries)
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

    fn does_io(&self) -> bool {
        true
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
