//! The HTTP edge: the ingress (routes, limits, admission), its answers, the admin token, webhook
//! signatures, the body check and the observation routes (`/metrics`, `/stats`, `/dashboard`).
//! Uses the runtime; nothing below imports it.

pub mod admin;
pub mod body;
pub mod ingress;
pub mod responses;
pub mod signature;
pub(crate) mod stats;
pub use hyper::HeaderMap;
