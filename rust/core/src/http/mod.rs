//! The HTTP edge: the ingress (routes, limits, admission), its answers, the admin token, webhook
//! signatures and the body check. Uses the runtime; nothing below imports it.

pub mod admin;
pub mod body;
pub mod ingress;
pub mod responses;
pub mod signature;
