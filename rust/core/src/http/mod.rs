//! The HTTP edge: the ingress (routes, limits, admission), its answers, webhook signatures and
//! the body check. Uses the runtime; nothing below imports it.

pub mod body;
pub mod ingress;
pub mod responses;
pub mod signature;
pub use hyper::HeaderMap;
