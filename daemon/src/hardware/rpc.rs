//! The llama.cpp RPC workers of `[backends.llamacpp] rpc_workers`, watched: each is asked every
//! few seconds for its devices' free memory (`ggml-rpc-probe`, with timeouts), so `/r1/status`
//! says which worker is gone, and a change that matters to the resident model (a worker it uses
//! vanished, or a vanished one is back) calls the hook `main.rs` gives, which loads the model
//! again on the workers that are there.
//!
//! An `rpc-server` serves one client at a time: a worker this machine holds a connection to (the
//! resident model's worker process) is [`RpcState::Serving`]; one that accepts but does not answer
//! while r1d holds no connection to it is [`RpcState::Busy`]: another client has it, or it is no
//! `rpc-server` at all (an HTTP server, a port that accepts and stays silent) — either way the
//! model does not use it.
//!
//! The last answer of each worker (its devices' free memory and the round trip) is kept while it
//! serves, so the planner ([`RpcWatch::hosts`]) plans a served split with the memory the workers
//! had before the model took it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one probe step may take: a worker that is up answers in milliseconds on a LAN.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of the timed transfer that measures a worker's link ([`ggml_rpc_probe::measure_link`]),
/// once when it first answers: 16 MiB, 0.14 s on a 1 Gbit/s LAN, long enough that the round trip
/// and TCP's slow start are a small part of it.
pub const LINK_PROBE_BYTES: u64 = 16 << 20;

/// How long the timed transfer may take (each step): 16 MiB at 2 MB/s.
pub const LINK_PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// What a worker looked like at the last probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcState {
    /// Not probed yet.
    Unknown,
    /// Answered: free and total memory of all its devices (bytes), device count.
    Up {
        /// Free memory, bytes.
        free_bytes: u64,
        /// Total memory, bytes.
        total_bytes: u64,
        /// Devices.
        devices: usize,
    },
    /// This machine holds a connection to it: the resident model uses it.
    Serving,
    /// Accepted without answering, and this machine holds no connection to it: serving another
    /// client, or not an `rpc-server`. The model does not use it; why, in words.
    Busy(String),
    /// Unreachable or not speaking the protocol: why.
    Gone(String),
}

impl RpcState {
    /// `up`, `serving`, `busy`, `gone` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            RpcState::Unknown => "unknown",
            RpcState::Up { .. } => "up",
            RpcState::Serving => "serving",
            RpcState::Busy(_) => "busy",
            RpcState::Gone(_) => "gone",
        }
    }
}

/// A worker's last answer: what the planner plans with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Free memory of each device (bytes), in ggml's order.
    pub devices_free_bytes: Vec<u64>,
    /// The shortest round trip of the probe's calls.
    pub round_trip: Duration,
}

/// One configured worker and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcWorker {
    /// `HOST:PORT`.
    pub endpoint: String,
    /// Its state at the last probe.
    pub state: RpcState,
    /// Its last answer (kept while it serves or is busy; dropped when it is gone).
    pub last_answer: Option<Answer>,
    /// The link's bandwidth as measured when it first answered (bytes/s; `None`: not measured,
    /// or the measurement failed — logged). Measured again after it was gone.
    pub link_bandwidth: Option<u64>,
    /// The measurement was tried since it last answered (not repeated every round).
    pub link_tried: bool,
}

/// What changed between two probes that matters to a model using the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcChange {
    /// A worker that served (in use) or answered is gone.
    Vanished(String),
    /// A worker that was gone answers again, free to serve.
    Returned(String),
}

/// The change of one worker between two states, if it matters. Pure.
pub fn change(endpoint: &str, before: &RpcState, after: &RpcState) -> Option<RpcChange> {
    match (before, after) {
        (RpcState::Serving | RpcState::Up { .. }, RpcState::Gone(_)) => {
            Some(RpcChange::Vanished(endpoint.to_owned()))
        }
        // Back and free: a worker that is back but serves someone else cannot be used yet.
        (RpcState::Gone(_) | RpcState::Busy(_), RpcState::Up { .. }) => {
            Some(RpcChange::Returned(endpoint.to_owned()))
        }
        _ => None,
    }
}

/// The watched workers (cheap to clone; the thread keeps its own reference).
#[derive(Clone, Default)]
pub struct RpcWatch {
    workers: Arc<Mutex<Vec<RpcWorker>>>,
    /// `[backends.llamacpp] rpc_link_latency_ms`, `rpc_link_bandwidth_bytes_per_s`.
    link: (Option<f64>, Option<u64>),
}

impl RpcWatch {
    /// Probes `endpoints` once (all at once, so silent ones cost one [`PROBE_TIMEOUT`] step, not
    /// one each), then starts a thread that probes them every `interval` and calls `on_change`
    /// for each change that matters (from that thread). Nothing is started for no endpoints.
    ///
    /// `link`: the configured round trip (milliseconds) and link bandwidth (bytes/s), each
    /// `None` for the default ([`RpcWatch::hosts`]).
    pub fn start(
        endpoints: &[String],
        link: (Option<f64>, Option<u64>),
        interval: Duration,
        on_change: impl Fn(RpcChange) + Send + 'static,
    ) -> RpcWatch {
        // The first round before the first plan, then one every `interval`.
        let watch = RpcWatch::once(endpoints, link);
        if endpoints.is_empty() {
            return watch;
        }
        let shared = Arc::clone(&watch.workers);
        let endpoints = endpoints.to_vec();
        let spawned = std::thread::Builder::new()
            .name("r1d-rpc-watch".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                round(&shared, &endpoints, &on_change);
            });
        if let Err(e) = spawned {
            tracing::error!("failed to start the rpc worker watch: {e}");
        }
        watch
    }

    /// `endpoints` probed once, all at once, and not watched (`r1d plan`). Blocking.
    pub fn once(endpoints: &[String], link: (Option<f64>, Option<u64>)) -> RpcWatch {
        let watch = RpcWatch {
            link,
            workers: Arc::new(Mutex::new(
                endpoints
                    .iter()
                    .map(|e| RpcWorker {
                        endpoint: e.clone(),
                        state: RpcState::Unknown,
                        last_answer: None,
                        link_bandwidth: None,
                        // A configured bandwidth is never measured.
                        link_tried: link.1.is_some(),
                    })
                    .collect(),
            )),
        };
        round(&watch.workers, endpoints, &|_| {});
        watch
    }

    /// The workers and their states at the last probe, in config order.
    pub fn workers(&self) -> Vec<RpcWorker> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The workers the planner may place layers on: those that answered at their last probe
    /// and are up or serving this machine (not gone, not busy with another client), with their
    /// devices' free memory as last answered and the link: as configured, else the measured
    /// round trip and bandwidth ([`LINK_PROBE_BYTES`] timed), else
    /// [`super::Link::LAN_BANDWIDTH`].
    pub fn hosts(&self) -> Vec<super::RpcHost> {
        let (latency_ms, bandwidth) = self.link;
        self.workers()
            .into_iter()
            .filter(|w| matches!(w.state, RpcState::Up { .. } | RpcState::Serving))
            .filter_map(|w| {
                let answer = w.last_answer?;
                Some(super::RpcHost {
                    endpoint: w.endpoint,
                    devices_free_bytes: answer.devices_free_bytes,
                    bandwidth_bytes_per_s: None,
                    link: super::Link {
                        round_trip_s: latency_ms
                            .map_or(answer.round_trip.as_secs_f64(), |ms| ms / 1000.0),
                        bandwidth_bytes_per_s: bandwidth
                            .or(w.link_bandwidth)
                            .unwrap_or(super::Link::LAN_BANDWIDTH),
                    },
                })
            })
            .collect()
    }
}

/// Probes every endpoint at once, records each state and calls `on_change` for each change that
/// matters.
fn round(
    shared: &Mutex<Vec<RpcWorker>>,
    endpoints: &[String],
    on_change: &(dyn Fn(RpcChange) + Send),
) {
    // Workers whose link has not been measured since they last answered.
    let untried: Vec<String> = shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|w| !w.link_tried)
        .map(|w| w.endpoint.clone())
        .collect();
    type Probed = (String, RpcState, Option<Answer>, Option<Option<u64>>);
    let probed: Vec<Probed> = std::thread::scope(|scope| {
        let handles: Vec<_> = endpoints
            .iter()
            .map(|e| {
                let measure = untried.contains(e);
                scope.spawn(move || {
                    let (state, answer) = probe_answer(e);
                    // Once it answers (free: an rpc-server serves one client at a time).
                    let link =
                        (measure && matches!(state, RpcState::Up { .. })).then(|| measure_link(e));
                    (e.clone(), state, answer, link)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (endpoint, after, answer, link) in probed {
        let before = {
            let mut workers = shared.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = workers.iter_mut().find(|w| w.endpoint == endpoint) else {
                continue;
            };
            match (&after, answer) {
                (_, Some(a)) => w.last_answer = Some(a),
                (RpcState::Gone(_), None) => w.last_answer = None,
                _ => {}
            }
            if let Some(measured) = link {
                w.link_bandwidth = measured;
                w.link_tried = true;
            }
            if matches!(after, RpcState::Gone(_)) && w.link_tried && w.link_bandwidth.is_some() {
                // It may come back on another path: measure it again then.
                w.link_bandwidth = None;
                w.link_tried = false;
            }
            std::mem::replace(&mut w.state, after.clone())
        };
        match &after {
            RpcState::Gone(why) | RpcState::Busy(why) if before != after => {
                tracing::warn!(worker = endpoint.as_str(), "rpc worker {endpoint}: {why}");
            }
            RpcState::Up { .. } | RpcState::Serving
                if matches!(before, RpcState::Gone(_) | RpcState::Busy(_)) =>
            {
                tracing::info!(
                    worker = endpoint.as_str(),
                    "rpc worker {endpoint} answers again"
                );
            }
            _ => {}
        }
        if let Some(c) = change(&endpoint, &before, &after) {
            on_change(c);
        }
    }
}

/// The bandwidth of the link to `endpoint` (bytes/s): [`LINK_PROBE_BYTES`] timed; `None` when the
/// measurement failed (logged). Blocking, up to [`LINK_PROBE_TIMEOUT`] per step.
fn measure_link(endpoint: &str) -> Option<u64> {
    match ggml_rpc_probe::measure_link(endpoint, LINK_PROBE_BYTES, LINK_PROBE_TIMEOUT) {
        Ok(speed) => {
            let bandwidth = speed.bandwidth_bytes_per_s();
            tracing::info!(
                worker = endpoint,
                "rpc worker {endpoint}: link measured at {:.0} MB/s ({} MiB in {:.1} ms, round \
                 trip {:.2} ms)",
                bandwidth as f64 / 1e6,
                speed.bytes >> 20,
                speed.elapsed.as_secs_f64() * 1000.0,
                speed.round_trip.as_secs_f64() * 1000.0
            );
            Some(bandwidth)
        }
        Err(e) => {
            tracing::warn!(
                worker = endpoint,
                "rpc worker {endpoint}: could not measure the link ({e}); planning with \
                 [backends.llamacpp] rpc_link_bandwidth_bytes_per_s or a 1 Gbit/s LAN's 117 MB/s"
            );
            None
        }
    }
}

/// One worker's state now. Blocking (up to [`PROBE_TIMEOUT`] per step); see [`probe_answer`].
pub fn probe(endpoint: &str) -> RpcState {
    probe_answer(endpoint).0
}

/// One worker's state now, and its answer when it answered. Blocking (up to [`PROBE_TIMEOUT`] per step).
///
/// A worker this machine holds a TCP connection to (`/proc/net/tcp`, `/proc/net/tcp6`: the
/// resident model's worker process, as a rule) is not connected to again: an `rpc-server`
/// serves one client at a time and listens with a backlog of 1, so probes while it serves would
/// pile up unanswered in its accept queue until new connections are dropped. Such a connection
/// `ESTABLISHED` is [`RpcState::Serving`]; in `CLOSE_WAIT` the worker closed it: gone.
pub fn probe_answer(endpoint: &str) -> (RpcState, Option<Answer>) {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = endpoint
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    let mut held = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for (remote, state) in tcp_connections(&text) {
            if addrs.iter().any(|a| same_endpoint(a, &remote)) {
                // ESTABLISHED wins over a CLOSE_WAIT left by an earlier process.
                if state == TCP_ESTABLISHED || held.is_none() {
                    held = Some(state);
                }
            }
        }
    }
    match held {
        Some(TCP_ESTABLISHED) => return (RpcState::Serving, None),
        Some(TCP_CLOSE_WAIT) => {
            return (
                RpcState::Gone(format!(
                    "rpc worker {endpoint} closed the connection r1d's model held to it"
                )),
                None,
            )
        }
        _ => {}
    }
    match ggml_rpc_probe::probe(endpoint, PROBE_TIMEOUT) {
        Ok(w) => (
            RpcState::Up {
                free_bytes: w.free_bytes(),
                total_bytes: w.devices.iter().map(|d| d.total_bytes).sum(),
                devices: w.devices.len(),
            },
            Some(Answer {
                devices_free_bytes: w.devices.iter().map(|d| d.free_bytes).collect(),
                round_trip: w.round_trip,
            }),
        ),
        Err(e) if e.is_busy() => (
            RpcState::Busy(format!(
                "{e}; r1d holds no connection to it, so the model does not use it (another \
                 client has it, or it is not an rpc-server)"
            )),
            None,
        ),
        Err(e) => (RpcState::Gone(e.to_string()), None),
    }
}

/// `st` of an established connection in `/proc/net/tcp` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 0x01;
/// `st` of a connection the other side closed (`TCP_CLOSE_WAIT`).
const TCP_CLOSE_WAIT: u8 = 0x08;

/// The remote address and state of each connection in a `/proc/net/tcp{,6}` table. Addresses
/// are the kernel's raw words printed in host byte order (`%08X` per 32-bit word), ports in
/// `%04X`. Pure.
fn tcp_connections(text: &str) -> Vec<(std::net::SocketAddr, u8)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
            continue;
        };
        let Some((addr, port)) = remote.split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(state)) = (u16::from_str_radix(port, 16), u8::from_str_radix(state, 16))
        else {
            continue;
        };
        let words: Option<Vec<u32>> = (0..addr.len() / 8)
            .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
            .collect();
        let ip = match words.as_deref() {
            Some([w]) => std::net::IpAddr::from(w.to_ne_bytes()),
            Some(ws @ [_, _, _, _]) => {
                let mut b = [0u8; 16];
                for (i, w) in ws.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                std::net::IpAddr::from(b)
            }
            _ => continue,
        };
        out.push((std::net::SocketAddr::new(ip, port), state));
    }
    out
}

/// `a` and `b` are the same endpoint, an IPv4 address also matching its IPv4-mapped IPv6 form.
fn same_endpoint(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

#[cfg(test)]
mod tests {
    #[test]
    fn connections_are_read_from_proc_net_tcp() {
        // Lines of a real /proc/net/tcp (x86-64, little endian): a listener on 127.0.0.1:49988,
        // an established connection to it, one in CLOSE_WAIT to 10.0.0.2:49988.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:C344 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:B2F0 0100007F:C344 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0100000A:B2F2 0200000A:C344 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let c = super::tcp_connections(v4);
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(
            c,
            vec![
                (addr("0.0.0.0:0"), 0x0A),
                (addr("127.0.0.1:49988"), 0x01),
                (addr("10.0.0.2:49988"), 0x08)
            ]
        );
        // IPv6: ::ffff:127.0.0.1 port 49988, the same endpoint as 127.0.0.1:49988.
        let v6 = "header\n   0: 00000000000000000000000000000000:B2F0 0000000000000000FFFF00000100007F:C344 01 0 0 0 0 0 0 0\n";
        let c = super::tcp_connections(v6);
        assert_eq!(c.len(), 1);
        assert!(super::same_endpoint(&c[0].0, &addr("127.0.0.1:49988")));
        assert!(!super::same_endpoint(&c[0].0, &addr("127.0.0.2:49988")));
    }

    use super::*;

    #[test]
    fn only_vanishing_and_returning_are_changes() {
        let up = RpcState::Up {
            free_bytes: 1,
            total_bytes: 2,
            devices: 1,
        };
        let gone = RpcState::Gone("refused".into());
        assert_eq!(
            change("w", &RpcState::Serving, &gone),
            Some(RpcChange::Vanished("w".into()))
        );
        assert_eq!(
            change("w", &up, &gone),
            Some(RpcChange::Vanished("w".into()))
        );
        assert_eq!(
            change("w", &gone, &up),
            Some(RpcChange::Returned("w".into()))
        );
        assert_eq!(change("w", &gone, &RpcState::Serving), None);
        // One that another client held (or that is no rpc-server) and now answers: usable.
        assert_eq!(
            change("w", &RpcState::Busy("silent".into()), &up),
            Some(RpcChange::Returned("w".into()))
        );
        assert_eq!(change("w", &up, &RpcState::Busy("silent".into())), None);
        // A model's own reload makes its workers idle, then busy again: no change.
        assert_eq!(change("w", &RpcState::Serving, &up), None);
        assert_eq!(change("w", &up, &RpcState::Serving), None);
        // The first probe is no change, whatever it finds.
        assert_eq!(change("w", &RpcState::Unknown, &gone), None);
        assert_eq!(change("w", &gone, &RpcState::Gone("other".into())), None);
    }
}
