//! Transports over the engine and the control core ([`crate::control`]). Each knows its own wire
//! shapes; the engine and the control core know none of them.
//!
//! - [`http`]: the router and its shared state; the routes are [`openai`], [`responses`], [`ollama`]
//!   and [`native`], all answering through [`answer`].
//! - [`error`]: the one mapping of errors to HTTP statuses, codes and `Retry-After`, and the one
//!   request-body parser.
//! - [`to_wire`]: every conversion from daemon types to `r1d_client::wire`;
//!   [`supervisor_wire`] the same for what the supervisor publishes (events, watch status,
//!   reload outcomes, the reported state).
//! - [`report`]: what `r1d hardware` and `r1d plan` print (text or JSON).
//! - [`observe`]: `GET /metrics` and the layer that counts, measures and logs each request.
//! - [`auth`]: the API key TCP listeners ask for (see [`crate::listen`]).
//! - [`dbus`]: D-Bus (`org.r1d.R1`).
//! - `fuzzing` (feature `fuzzing`, and in tests): the request-body checks without an engine, for
//!   the fuzz targets in `fuzz/`.

pub mod answer;
pub mod auth;
pub mod dbus;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http;
pub mod native;
pub mod observe;
pub mod ollama;
pub mod openai;
pub mod report;
pub mod responses;
pub mod supervisor_wire;
pub mod to_wire;
