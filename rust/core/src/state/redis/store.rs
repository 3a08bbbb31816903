//! The store of one pipeline's keys in a `RedisDb`: leases, commits, delivery claims, the journal
//! (through the database's group-commit writer) and the records.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::journal::{self, JournalKeys, JournalWrite, OutcomeWrite};
use super::scripts::CommitCall;
use super::{recovery, RedisDb};
use crate::state::{ExecutionRecord, JournalEntry, Journaled, StateStore, StoreError};

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

/// The store of one pipeline (`RedisDb::store`).
pub struct RedisStore {
    pub(super) db: Arc<RedisDb>,
    pub(super) prefix: String,
    pub(super) journal: Arc<JournalKeys>,
    pub(super) lease: Duration,
    /// Key → the token of the lease this process holds on it (one execution per key at a time).
    pub(super) held: Mutex<HashMap<String, String>>,
    /// Executions whose journal entry this process owns (journaled here, or taken over) and whose
    /// outcome is not written yet: their commit writes only while the entry is still ours.
    pub(super) journaled: Arc<Mutex<HashSet<Box<str>>>>,
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

    fn peek(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let state = self.state_key(key);
        let value: Option<Vec<u8>> = self.db.with_conn(|c| redis::cmd("GET").arg(&state).query(c))?;
        Ok(value.map(Bytes::from))
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
                    recovery::HEARTBEAT_TTL.as_secs()
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
        self.db.writer.journal(JournalWrite { keys: self.journal.clone(), id, entry: encoded }, done);
    }

    fn record_outcome(&self, record: ExecutionRecord) {
        let journaled = self.journaled().remove(&record.id);
        self.db.writer.outcome(OutcomeWrite {
            keys: self.journal.clone(),
            record_key: self.record_key(&record.id),
            record: encode_record(&record),
            ttl_ms: self.records_ttl_ms(),
            listed_in: (record.status != "succeeded").then(|| format!("{}:{}", self.prefix, record.status)),
            id: record.id,
            journaled,
        });
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
        let entries = recovery::take_over(
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
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::state::redis::tests::RedisServer;
    use crate::state::redis::RedisDb;

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
