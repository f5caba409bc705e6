//! slipway: a single-node, self-hosted mini-PaaS.
//!
//! The binary (`main.rs`) only parses arguments and dispatches into [`cli`]; every domain lives in
//! its own module so tests can drive it directly. See docs/ARCHITECTURE.md for the map.

pub mod acme;
pub mod app;
pub mod backup;
pub mod build;
pub mod certs;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod deploy;
pub mod dyno;
pub mod envs;
pub mod fsutil;
pub mod git;
pub mod healthcheck;
pub mod home;
pub mod job;
pub mod keys;
pub mod logs;
pub mod procfile;
pub mod release;
pub mod router;
pub mod sandbox;
pub mod settings;
pub mod store;
pub mod timefmt;
pub mod users;
pub mod worker;
