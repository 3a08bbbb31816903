//! Frames between the server and its worker processes, over a Unix socketpair.
//!
//! Every frame is `u32 length (LE) + payload`. The server sends one batch frame; the worker
//! answers with one result frame per event as each finishes (so the server commits while the
//! worker runs the next), plus one hello frame (ready, or warm-up failed) after it starts.
//!
//! Batch payload: `u32 base` (index of its first event in the slot's batch), `u32 n`, then per event: `u8 flags (1 key, 2 state, 4 deadline)`, `str id`,
//! `[str key]`, `bytes body`, `[bytes state]`, `f64 received_unix`, `[f64 remaining_s]`,
//! `u16 headers`, per header `str name`, `bytes value`. `str`/`bytes` are `u32 len + data`.
//!
//! Result payload: `u32 index`, `u8 kind`, then for `REPLY`: `bytes reply`, `u8 has_state`,
//! `[bytes state]`; for `ERROR`: `str code`, `str message`; for `READY`: nothing; for
//! `WARMUP_FAILED`: `str message`. Hello frames carry index `u32::MAX`.

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::runtime::slot_loop::{Begun, RunResult};

pub const REPLY: u8 = 0;
pub const ERROR: u8 = 1;
pub const READY: u8 = 2;
pub const WARMUP_FAILED: u8 = 3;
pub const HELLO: u32 = u32::MAX;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a batch frame (length prefix included); its events are numbered from `base`.
pub fn encode_batch(base: u32, batch: &[Begun]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.iter().map(|b| b.job.body.len() + 256).sum::<usize>());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for b in batch {
        let exec = &b.job.exec;
        let remaining = b.job.remaining();
        let flags =
            u8::from(exec.key.is_some()) | (u8::from(b.state.is_some()) << 1) | (u8::from(remaining.is_some()) << 2);
        out.push(flags);
        put_bytes(&mut out, exec.id_str.as_bytes());
        if let Some(k) = &exec.key {
            put_bytes(&mut out, k.as_bytes());
        }
        put_bytes(&mut out, &b.job.body);
        if let Some(s) = &b.state {
            put_bytes(&mut out, s);
        }
        out.extend_from_slice(&exec.received_unix.to_le_bytes());
        if let Some(r) = remaining {
            out.extend_from_slice(&r.to_le_bytes());
        }
        let headers = &b.job.headers;
        out.extend_from_slice(&(headers.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for (name, value) in headers.iter().take(u16::MAX as usize) {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// One event of a batch frame, borrowed from the frame.
#[derive(Debug, PartialEq)]
pub struct WireEvent<'a> {
    /// Index in the slot's batch: result frames carry it back.
    pub index: u32,
    pub id: &'a str,
    pub key: Option<&'a str>,
    pub body: &'a [u8],
    pub state: Option<&'a [u8]>,
    pub received_unix: f64,
    pub remaining: Option<f64>,
    pub headers: Vec<(&'a str, &'a [u8])>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct WireError(pub &'static str);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError("truncated frame"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| WireError("truncated frame"))?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| WireError("truncated frame"))?))
    }
    fn f64(&mut self) -> Result<f64, WireError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().map_err(|_| WireError("truncated frame"))?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError("invalid UTF-8 in a frame"))
    }
}

/// Decodes a batch payload (without its length prefix).
pub fn decode_batch(payload: &[u8]) -> Result<Vec<WireEvent<'_>>, WireError> {
    let mut r = Reader { buf: payload };
    let base = r.u32()?;
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for i in 0..n {
        let flags = r.u8()?;
        let id = r.str()?;
        let key = if flags & 1 != 0 { Some(r.str()?) } else { None };
        let body = r.bytes()?;
        let state = if flags & 2 != 0 { Some(r.bytes()?) } else { None };
        let received_unix = r.f64()?;
        let remaining = if flags & 4 != 0 { Some(r.f64()?) } else { None };
        let nh = r.u16()? as usize;
        let mut headers = Vec::with_capacity(nh);
        for _ in 0..nh {
            headers.push((r.str()?, r.bytes()?));
        }
        out.push(WireEvent { index: base + i as u32, id, key, body, state, received_unix, remaining, headers });
    }
    Ok(out)
}

/// Encodes a result frame (length prefix included). `kind` REPLY: `a` = reply, `b` = state;
/// ERROR: `a` = code, `b` = message; WARMUP_FAILED: `a` = message.
pub fn encode_result(index: u32, kind: u8, a: &[u8], b: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + a.len() + b.map_or(0, <[u8]>::len));
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&index.to_le_bytes());
    out.push(kind);
    match kind {
        REPLY => {
            put_bytes(&mut out, a);
            out.push(u8::from(b.is_some()));
            if let Some(b) = b {
                put_bytes(&mut out, b);
            }
        }
        ERROR => {
            put_bytes(&mut out, a);
            put_bytes(&mut out, b.unwrap_or_default());
        }
        WARMUP_FAILED => put_bytes(&mut out, a),
        _ => {}
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// A decoded result frame.
#[derive(Debug)]
pub enum WireResult {
    Event(u32, RunResult),
    Ready,
    WarmupFailed(String),
}

pub fn decode_result(payload: &[u8]) -> Result<WireResult, WireError> {
    let mut r = Reader { buf: payload };
    let index = r.u32()?;
    match r.u8()? {
        REPLY => {
            let reply = Bytes::copy_from_slice(r.bytes()?);
            let state = if r.u8()? != 0 { Some(Bytes::copy_from_slice(r.bytes()?)) } else { None };
            Ok(WireResult::Event(index, RunResult::Reply { reply, state }))
        }
        ERROR => {
            let code = ErrorCode::parse(r.str()?).unwrap_or(ErrorCode::PipelineError);
            let message = String::from_utf8_lossy(r.bytes()?).into_owned();
            Ok(WireResult::Event(index, RunResult::Error { code, message }))
        }
        READY => Ok(WireResult::Ready),
        WARMUP_FAILED => Ok(WireResult::WarmupFailed(String::from_utf8_lossy(r.bytes()?).into_owned())),
        _ => Err(WireError("unknown result kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let f = encode_result(3, REPLY, b"{\"a\":1}", Some(b"{}"));
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        match decode_result(&f[4..]).unwrap() {
            WireResult::Event(3, RunResult::Reply { reply, state }) => {
                assert_eq!(&reply[..], b"{\"a\":1}");
                assert_eq!(state.as_deref(), Some(&b"{}"[..]));
            }
            other => panic!("{other:?}"),
        }
        let f = encode_result(0, ERROR, b"pipeline_error", Some(b"boom"));
        match decode_result(&f[4..]).unwrap() {
            WireResult::Event(0, RunResult::Error { code, message }) => {
                assert_eq!(code, ErrorCode::PipelineError);
                assert_eq!(message, "boom");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_result(&encode_result(HELLO, READY, b"", None)[4..]), Ok(WireResult::Ready)));
        assert!(decode_result(&f[4..f.len() - 1]).is_err(), "a truncated frame is an error, not a panic");
    }
}
