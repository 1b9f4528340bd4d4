//! Transports. Each knows its own wire shapes; the engine knows none of them.

pub mod http;
