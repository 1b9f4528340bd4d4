//! Transports. Each knows its own wire shapes; the engine knows none of them.

pub mod answer;
pub mod dbus;
pub mod http;
pub mod ollama;
pub mod openai;
pub mod supervisor_wire;
