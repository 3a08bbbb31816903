//! The HTTP edge, the outermost layer: the server (tokio + hyper), routes, limits, the admin
//! token, webhook signatures, the body check, and the translation of a webhook into an `Event`
//! and of its `Admission` back into an answer. It uses the runtime; nothing outside `http/` (but
//! the composition root, the bindings) uses it.

mod admin;
pub(crate) mod body;
mod events;
mod hook;
mod openapi;
mod responses;
mod routes;
mod server;
pub(crate) mod signature;
mod stats;

pub use server::{HttpError, HttpListener, HttpServer};
pub use signature::sign_hex;
