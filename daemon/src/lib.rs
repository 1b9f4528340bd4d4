//! r1d: a Linux service that serves DeepSeek-R1 to every program on the machine.
//!
//! The daemon finds backend plugins ([`backend`]), loads the configured model through one of
//! them, keeps it resident in the [`engine`], renders prompts with the model's own chat template
//! ([`chat`]) and serves it over a Unix socket ([`api::http`]) and D-Bus ([`api::dbus`]), both controlled
//! through one core ([`control`]). `main.rs` only wires these
//! together; see `docs/architecture.md` for the map.

pub mod access;
pub mod api;
pub mod backend;
pub mod catalog;
pub mod chat;
pub mod cli_assets;
pub mod config;
pub mod control;
pub mod engine;
pub mod files;
pub mod hardware;
pub mod listen;
pub mod logging;
pub mod paths;
pub mod planner;
pub mod scheduling;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod telemetry;
