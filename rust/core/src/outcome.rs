//! What an execution ends with, and how long each phase took: plain values that the runtime
//! produces and `observe`, the HTTP answers and the bindings read. A leaf: imports only `error`.

use bytes::Bytes;

use crate::error::ErrorCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Queued = 0,
    Running = 1,
    Committing = 2,
    Succeeded = 3,
    Failed = 4,
    TimedOut = 5,
}

impl Status {
    pub(crate) fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Queued,
            1 => Status::Running,
            2 => Status::Committing,
            3 => Status::Succeeded,
            4 => Status::Failed,
            _ => Status::TimedOut,
        }
    }

    /// The name in the public contract (`Committing` shows as `running`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running | Status::Committing => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::TimedOut)
    }
}

/// Microseconds spent in each phase; `total_us` runs from the request read to the state commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub queue_us: u64,
    pub run_us: u64,
    pub commit_us: u64,
    pub total_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pipeline's reply, already JSON.
    Succeeded(Bytes),
    Failed {
        code: ErrorCode,
        message: String,
    },
    TimedOut {
        message: String,
    },
}
