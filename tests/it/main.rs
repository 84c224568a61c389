//! airlock's integration tests: one test binary, so the fixtures in [`support`] are compiled
//! and linked once. Each module is one subject, tested against real peers (CNCF distribution,
//! skopeo, dockerd, containerd, podman, Prometheus) started by the fixtures on 127.0.0.1.
//!
//! Everything here shares one process, so a test never changes process-wide state another test
//! reads: no `std::env::set_var` (a child process gets its own environment instead), no fixed
//! ports (the kernel picks them), and fixtures kept in statics are independent per module.
//! External programs are named by absolute path in [`support::tools`], never found on `PATH`.
//!
//! Run one module with `cargo test --test it -- MODULE::` (for example `pull::`).

mod support;

mod access;
mod airgap;
mod auth;
mod budget;
mod bundle_cli;
mod bundles;
mod cli;
mod connections;
mod container;
mod credentials;
mod durability;
mod e2e;
mod e2e_auth;
mod eviction;
mod faults;
mod fixtures;
mod fuzz_corpora;
mod input;
mod metrics;
mod pins;
mod prometheus;
mod pull;
mod redirects;
mod referrers;
mod routing;
mod signatures;
mod tls;
