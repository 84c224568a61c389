//! airlock: a pull-through caching proxy for container registries.
//!
//! Dependencies point one way: `app → api → cache → {store, upstream} → oci`; `config`, `error`
//! and `oci` are leaves every module may use. See `DESIGN.md` in the team's shared notes and
//! the README for the request flow.

pub mod api;
pub mod app;
pub mod auth;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod client_config;
pub mod config;
pub mod error;
pub mod fetch_policy;
pub mod gc;
pub mod inventory;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod oci;
pub mod ops;
pub mod pattern;
pub mod preload;
pub mod progress;
pub mod referrers;
pub mod signatures;
pub mod store;
pub mod upstream;
