//! End-to-end tests: the real `r1d` binary with real plugins on a real Unix socket.
//! One test binary with a module per area keeps link time down.

mod cli;
mod clients;
mod compat;
mod cpu_variants;
mod dbus;
mod hardening;
mod host;
mod llama;
mod onnx;
mod parallel;
mod plan;
mod remote;
mod rpc;
mod standins;
mod store;
mod systemd;
mod tcp;
mod template;
mod vulkan;
mod watch;
mod worker;

use r1d_client::wire::{ChatCompletionRequest, ChatMessage};

/// A one-message request.
pub fn ask(prompt: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages: vec![ChatMessage::new("user", prompt)],
        ..Default::default()
    }
}
