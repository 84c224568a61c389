//! The Registry HTTP API v2, pull side: route parsing, handlers, OCI error bodies, the request
//! log, and the server's accept loop. The only module whose signatures mention hyper/http.

pub mod admin;
mod body;
pub mod errors;
mod handler;
mod limits;
pub mod range;
pub mod route;
mod sendfile;
pub mod server;
pub mod tls;
mod token;

pub use body::Body;
pub use handler::State;
