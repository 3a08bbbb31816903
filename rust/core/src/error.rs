//! Every error of the public contract in one enum: its HTTP status and its code string live here
//! and nowhere else. The core passes `ErrorCode` values; the HTTP layer and the bindings render them.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    BadRequest,
    BadSignature,
    Unauthorized,
    UnknownPipeline,
    NotFound,
    UnknownExecution,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    HeadersTooLarge,
    Overloaded,
    PipelineError,
    StateError,
    StateTooLarge,
    SlotCrashed,
    ShuttingDown,
    PipelineTimeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidJson,
        ErrorCode::BadRequest,
        ErrorCode::BadSignature,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownPipeline,
        ErrorCode::NotFound,
        ErrorCode::UnknownExecution,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::PayloadTooLarge,
        ErrorCode::HeadersTooLarge,
        ErrorCode::Overloaded,
        ErrorCode::PipelineError,
        ErrorCode::StateError,
        ErrorCode::StateTooLarge,
        ErrorCode::SlotCrashed,
        ErrorCode::ShuttingDown,
        ErrorCode::PipelineTimeout,
    ];

    /// The `code` string of the JSON error body.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownPipeline => "unknown_pipeline",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownExecution => "unknown_execution",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::PipelineError => "pipeline_error",
            ErrorCode::StateError => "state_error",
            ErrorCode::StateTooLarge => "state_too_large",
            ErrorCode::SlotCrashed => "slot_crashed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::PipelineTimeout => "pipeline_timeout",
        }
    }

    /// The HTTP status that carries this error.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::BadRequest => 400,
            ErrorCode::BadSignature | ErrorCode::Unauthorized => 401,
            ErrorCode::UnknownPipeline | ErrorCode::NotFound | ErrorCode::UnknownExecution => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::Overloaded => 429,
            // A state over `max_state_bytes` is the pipeline's doing, not the request's: 500, not 413.
            ErrorCode::PipelineError | ErrorCode::StateError | ErrorCode::StateTooLarge | ErrorCode::SlotCrashed => 500,
            ErrorCode::ShuttingDown => 503,
            ErrorCode::PipelineTimeout => 504,
        }
    }

    /// Refusals that a client should retry later (they carry `Retry-After`).
    pub const fn retry_later(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::ShuttingDown)
    }

    /// The code named by `s`, if it is one of the contract's.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!((400..600).contains(&c.status()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
