//! The Lua scripts of the per-key calls: take a lease and read (`ACQUIRE`), commit an execution
//! (`COMMIT`, also used by the journal's writer for outcomes), release a lease, claim a delivery.

use redis::{Connection, Script};

use super::journal::JournalKeys;

// Takes the lease and reads the state in one round trip: {1, state or false}, or {0, false}.
// Holding the lease already counts (a retry after a lost reply).
pub(super) const ACQUIRE: &str = r"
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
pub(super) const COMMIT: &str = r"
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
pub(super) struct CommitCall<'a> {
    /// The key's lock and state keys, the lease token and the new state.
    pub(super) lease: Option<(String, String, &'a str, &'a [u8])>,
    /// The record's key and the encoded record.
    pub(super) record: Option<(&'a str, &'a [u8])>,
    pub(super) ttl_ms: u64,
    pub(super) id: &'a str,
    pub(super) journal: &'a JournalKeys,
    /// This node, when the execution is journaled here: its entry must still be ours.
    pub(super) node: Option<&'a str>,
}

impl CommitCall<'_> {
    pub(super) fn invoke(&self, script: &Script, c: &mut Connection) -> redis::RedisResult<i64> {
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

pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

// Claims a delivery id for an execution: false when claimed now, else the execution id that has it.
pub(super) const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])";
