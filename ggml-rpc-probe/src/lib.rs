//! A client for the first three commands of ggml's RPC protocol (`HELLO`, `DEVICE_COUNT`,
//! `GET_DEVICE_MEMORY`): what an `rpc-server` worker has, asked with timeouts.
//!
//! Why not ggml's own client: `ggml_backend_rpc_add_server` and every later call on an RPC device
//! end the process with `GGML_ABORT` when the worker cannot be reached or stops answering
//! (ggml/src/ggml-rpc/ggml-rpc.cpp: `rpc_dispatcher::start`, `RPC_STATUS_ASSERT`). r1d asks here
//! first, so an unreachable worker is an error value, never a dead process.
//!
//! The wire format is the one of llama.cpp's `ggml/src/ggml-rpc/ggml-rpc.cpp` at protocol
//! version [`PROTO_MAJOR`].x (llama-cpp-sys-2 0.1.161): a request is `cmd: u8`, `size: u64 LE`,
//! `size` bytes; a response is `size: u64 LE`, `size` bytes. The first command on a connection
//! must be `HELLO`.
//!
//! An `rpc-server` serves **one client at a time** (its accept loop serves each connection to the
//! end before the next): while a model's worker process holds the connection, a probe is accepted
//! by the kernel but gets no answer — [`ProbeError::Busy`] after the timeout, which means the
//! worker is alive.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The protocol's major version this client speaks (`RPC_PROTO_MAJOR_VERSION` in ggml-rpc.h).
pub const PROTO_MAJOR: u8 = 7;
/// Highest minor version understood (`RPC_PROTO_MINOR_VERSION`); a server's higher minor is refused
/// by ggml's own client too.
pub const PROTO_MINOR: u8 = 0;

/// `rpc_cmd` values (ggml-rpc.cpp; `RPC_CMD_HELLO` is fixed at 14 across versions).
const CMD_ALLOC_BUFFER: u8 = 0;
const CMD_BUFFER_GET_BASE: u8 = 3;
const CMD_FREE_BUFFER: u8 = 4;
const CMD_SET_TENSOR: u8 = 6;
const CMD_GET_DEVICE_MEMORY: u8 = 11;
const CMD_HELLO: u8 = 14;
const CMD_DEVICE_COUNT: u8 = 15;
/// `RPC_CONN_CAPS_SIZE` (ggml-rpc/transport.h): transport capabilities in the HELLO messages;
/// all zero = plain TCP, no upgrade.
const CONN_CAPS_SIZE: usize = 24;

/// One device of a worker, as the worker's ggml backend reports it (`ggml_backend_dev_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Free memory, bytes.
    pub free_bytes: u64,
    /// Total memory, bytes.
    pub total_bytes: u64,
}

/// What a worker answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// The endpoint asked, `HOST:PORT`.
    pub endpoint: String,
    /// Protocol version the worker speaks (major, minor, patch).
    pub version: (u8, u8, u8),
    /// Its devices in ggml's order (device `i` is llama.cpp's `RPCn` for that endpoint).
    pub devices: Vec<DeviceMemory>,
    /// The shortest request–response round trip of the probe's calls after `HELLO`
    /// (`DEVICE_COUNT`, each `GET_DEVICE_MEMORY`: a few bytes each way, so this is the link's
    /// latency plus the worker's dispatch).
    pub round_trip: Duration,
}

impl Worker {
    /// Free memory of all its devices, bytes.
    pub fn free_bytes(&self) -> u64 {
        self.devices.iter().map(|d| d.free_bytes).sum()
    }
}

/// Why a worker gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not `HOST:PORT` (ggml splits at the first `:`, so no IPv6 literals).
    #[error("rpc worker `{0}` is not HOST:PORT (ggml's RPC endpoints take no IPv6 literal)")]
    BadEndpoint(String),
    /// `HOST:PORT` whose port is not a number from 1 to 65535.
    #[error("rpc worker `{endpoint}`: port {port} is not a TCP port (1 to 65535)")]
    BadPort {
        /// The endpoint.
        endpoint: String,
        /// The port as written.
        port: String,
    },
    /// The host name does not resolve.
    #[error("rpc worker {endpoint}: cannot resolve the host: {source}")]
    Resolve {
        /// The endpoint.
        endpoint: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Nothing listens, or the host is unreachable.
    #[error("rpc worker {endpoint} is unreachable: {source}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The connect error (refused, timed out, no route).
        source: std::io::Error,
    },
    /// Connected, but no answer within the timeout: the worker serves another client (an
    /// `rpc-server` serves one at a time) or hangs.
    #[error("rpc worker {endpoint} accepted the connection but did not answer within {timeout:?} (busy serving another client, or hung)")]
    Busy {
        /// The endpoint.
        endpoint: String,
        /// The timeout waited.
        timeout: Duration,
    },
    /// The connection broke or the answer was not the protocol's.
    #[error("rpc worker {endpoint}: {message}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
}

impl ProbeError {
    /// True when the worker is known to be alive (it accepted, and is busy with another client).
    pub fn is_busy(&self) -> bool {
        matches!(self, ProbeError::Busy { .. })
    }
}

/// Checks `HOST:PORT` as ggml's `parse_endpoint` will read it.
///
/// # Errors
/// [`ProbeError::BadEndpoint`].
pub fn check_endpoint(endpoint: &str) -> Result<(), ProbeError> {
    let bad = || ProbeError::BadEndpoint(endpoint.to_owned());
    let (host, port) = endpoint.split_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.contains(':') {
        return Err(bad());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(ProbeError::BadPort {
            endpoint: endpoint.to_owned(),
            port: port.to_owned(),
        }),
    }
}

/// Connects to `endpoint` (`HOST:PORT`), says HELLO and asks for each device's memory. Each step
/// (connect, every read and write) waits at most `timeout`. Blocking.
///
/// # Errors
/// [`ProbeError`]: a bad endpoint, a host that does not resolve, nothing listening, no answer
/// (busy or hung), or a broken or foreign answer (another protocol version is named).
pub fn probe(endpoint: &str, timeout: Duration) -> Result<Worker, ProbeError> {
    let (mut stream, version) = open(endpoint, timeout)?;
    let io = |e| io_error(endpoint, timeout, e);
    let started = std::time::Instant::now();
    let count =
        call(&mut stream, CMD_DEVICE_COUNT, &[], 4).map_err(|e| e.into_probe(endpoint, &io))?;
    let mut round_trip = started.elapsed();
    let count = u32::from_le_bytes(count[..4].try_into().expect("4 bytes"));
    let mut devices = Vec::new();
    for device in 0..count {
        let started = std::time::Instant::now();
        let m = call(
            &mut stream,
            CMD_GET_DEVICE_MEMORY,
            &device.to_le_bytes(),
            16,
        )
        .map_err(|e| e.into_probe(endpoint, &io))?;
        devices.push(DeviceMemory {
            free_bytes: u64::from_le_bytes(m[..8].try_into().expect("8 bytes")),
            total_bytes: u64::from_le_bytes(m[8..16].try_into().expect("8 bytes")),
        });
        round_trip = round_trip.min(started.elapsed());
    }
    Ok(Worker {
        endpoint: endpoint.to_owned(),
        version,
        devices,
        round_trip,
    })
}

/// What one timed transfer to a worker showed (see [`measure_link`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpeed {
    /// Bytes sent in the timed `SET_TENSOR`.
    pub bytes: u64,
    /// The shortest round trip of a small call (`BUFFER_GET_BASE`) on the same connection.
    pub round_trip: Duration,
    /// From the first byte of the `SET_TENSOR` written to the answer of the call after it.
    pub elapsed: Duration,
}

impl LinkSpeed {
    /// Bytes per second the link carried: `bytes` over `elapsed` less one round trip (the call
    /// that closes the timing), at least 1 µs.
    pub fn bandwidth_bytes_per_s(&self) -> u64 {
        let s = self
            .elapsed
            .saturating_sub(self.round_trip)
            .max(Duration::from_micros(1))
            .as_secs_f64();
        (self.bytes as f64 / s) as u64
    }
}

/// Bytes of `rpc_tensor` (ggml-rpc.cpp, `#pragma pack(1)`): id u64, type u32, buffer u64,
/// ne\[4\] u32, nb\[4\] u32, op u32, op_params\[16\] i32, flags i32, src\[10\] u64, view_src u64,
/// view_offs u64, data u64, name\[64\], use_count i32.
const RPC_TENSOR_SIZE: usize = 296;

/// Measures the link to `endpoint` the way a model load uses it: allocates `bytes` on the
/// worker's device 0 (`ALLOC_BUFFER`), writes them as one F32 tensor (`SET_TENSOR`, which has
/// no answer) and times it to the answer of the `BUFFER_GET_BASE` sent after it, then frees the
/// buffer (`FREE_BUFFER`). The worker's ggml aborts on a malformed tensor, so the tensor is
/// the plain one ggml's own client sends: contiguous, inside the buffer, no name. Blocking; each
/// step waits at most `timeout` (the transfer too: give it the bytes' time on a slow link).
/// `bytes` is taken between 4 bytes and 1 GiB, in whole F32 values.
///
/// # Errors
/// As [`probe`]; [`ProbeError::Protocol`] when the worker cannot allocate `bytes` (0 pointer).
pub fn measure_link(
    endpoint: &str,
    bytes: u64,
    timeout: Duration,
) -> Result<LinkSpeed, ProbeError> {
    let (mut stream, _) = open(endpoint, timeout)?;
    let io = |e| io_error(endpoint, timeout, e);
    // rpc_tensor's ne/nb are u32: one tensor of at most 1 GiB, a whole number of F32 values.
    let bytes = bytes.clamp(4, 1 << 30) / 4 * 4;
    let mut alloc = 0u32.to_le_bytes().to_vec();
    alloc.extend_from_slice(&bytes.to_le_bytes());
    let r =
        call(&mut stream, CMD_ALLOC_BUFFER, &alloc, 16).map_err(|e| e.into_probe(endpoint, &io))?;
    let buffer = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
    if buffer == 0 {
        return Err(ProbeError::Protocol {
            endpoint: endpoint.to_owned(),
            message: format!("could not allocate {bytes} bytes on device 0 to measure the link"),
        });
    }
    let base_of = |stream: &mut TcpStream| -> Result<(u64, Duration), ProbeError> {
        let started = std::time::Instant::now();
        let b = call(stream, CMD_BUFFER_GET_BASE, &buffer.to_le_bytes(), 8)
            .map_err(|e| e.into_probe(endpoint, &io))?;
        Ok((
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            started.elapsed(),
        ))
    };
    let (base, mut round_trip) = base_of(&mut stream)?;
    round_trip = round_trip.min(base_of(&mut stream)?.1);

    // SET_TENSOR's input: | rpc_tensor | cache_flag (u8) | offset (u64) | data |.
    let mut input = Vec::with_capacity(RPC_TENSOR_SIZE + 9 + bytes as usize);
    input.extend_from_slice(&rpc_tensor_f32(buffer, base, bytes / 4));
    input.push(0); // cache_flag: do not write it to the worker's cache directory
    input.extend_from_slice(&0u64.to_le_bytes()); // offset
    input.resize(input.len() + bytes as usize, 0);
    let started = std::time::Instant::now();
    let sent = send(&mut stream, CMD_SET_TENSOR, &input).map_err(|e| e.into_probe(endpoint, &io));
    let result = sent.and_then(|()| base_of(&mut stream)).map(|_| LinkSpeed {
        bytes,
        round_trip,
        elapsed: started.elapsed(),
    });
    // Freed whatever the timing gave; a closed connection frees it on the worker too.
    let _ = send(&mut stream, CMD_FREE_BUFFER, &buffer.to_le_bytes());
    result
}

/// An `rpc_tensor` of `n` F32 values at `data` in `buffer`: one row, contiguous.
fn rpc_tensor_f32(buffer: u64, data: u64, n: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(RPC_TENSOR_SIZE);
    t.extend_from_slice(&1u64.to_le_bytes()); // id
    t.extend_from_slice(&0u32.to_le_bytes()); // type: GGML_TYPE_F32
    t.extend_from_slice(&buffer.to_le_bytes());
    for ne in [n as u32, 1, 1, 1] {
        t.extend_from_slice(&ne.to_le_bytes());
    }
    for nb in [4u32, 4 * n as u32, 4 * n as u32, 4 * n as u32] {
        t.extend_from_slice(&nb.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes()); // op: GGML_OP_NONE
    t.extend_from_slice(&[0u8; 64]); // op_params
    t.extend_from_slice(&0i32.to_le_bytes()); // flags
    t.extend_from_slice(&[0u8; 80]); // src
    t.extend_from_slice(&0u64.to_le_bytes()); // view_src
    t.extend_from_slice(&0u64.to_le_bytes()); // view_offs
    t.extend_from_slice(&data.to_le_bytes());
    t.extend_from_slice(&[0u8; 64]); // name
    t.extend_from_slice(&0i32.to_le_bytes()); // use_count
    debug_assert_eq!(t.len(), RPC_TENSOR_SIZE);
    t
}

/// An I/O error of a step as a [`ProbeError`]: a timeout is [`ProbeError::Busy`].
fn io_error(endpoint: &str, timeout: Duration, e: std::io::Error) -> ProbeError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        ProbeError::Busy {
            endpoint: endpoint.to_owned(),
            timeout,
        }
    } else {
        ProbeError::Protocol {
            endpoint: endpoint.to_owned(),
            message: format!("the connection broke: {e}"),
        }
    }
}

/// Connects, sets the step timeouts, says HELLO and checks the protocol version. Returns the
/// connection and the worker's version.
fn open(endpoint: &str, timeout: Duration) -> Result<(TcpStream, (u8, u8, u8)), ProbeError> {
    check_endpoint(endpoint)?;
    let addrs: Vec<_> = endpoint
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| ProbeError::Unreachable {
        endpoint: endpoint.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })?;
    let io = |e| io_error(endpoint, timeout, e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = stream.set_nodelay(true);

    let hello = call(
        &mut stream,
        CMD_HELLO,
        &[0u8; CONN_CAPS_SIZE],
        4 + CONN_CAPS_SIZE,
    )
    .map_err(|e| e.into_probe(endpoint, &io))?;
    let version = (hello[0], hello[1], hello[2]);
    if version.0 != PROTO_MAJOR || version.1 > PROTO_MINOR {
        return Err(ProbeError::Protocol {
            endpoint: endpoint.to_owned(),
            message: format!(
                "speaks RPC protocol {}.{}.{}, this build of r1d speaks {PROTO_MAJOR}.{PROTO_MINOR}.x \
                 (build the worker from the same llama.cpp: scripts/build-rpc-worker)",
                version.0, version.1, version.2
            ),
        });
    }
    Ok((stream, version))
}

enum CallError {
    Io(std::io::Error),
    Size { want: usize, got: u64 },
}

impl CallError {
    fn into_probe(self, endpoint: &str, io: &dyn Fn(std::io::Error) -> ProbeError) -> ProbeError {
        match self {
            CallError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ProbeError::Protocol {
                    endpoint: endpoint.to_owned(),
                    message: "closed the connection without answering (not an rpc-server of this \
                          protocol version?)"
                        .to_owned(),
                }
            }
            CallError::Io(e) => io(e),
            CallError::Size { want, got } => ProbeError::Protocol {
                endpoint: endpoint.to_owned(),
                message: format!(
                    "answered {got} bytes where {want} were expected (another protocol version?)"
                ),
            },
        }
    }
}

/// One request that has no response.
/// The header (`cmd`, size) and the input are written apart, so a large input is not copied.
fn send(stream: &mut TcpStream, cmd: u8, input: &[u8]) -> Result<(), CallError> {
    let mut header = [0u8; 9];
    header[0] = cmd;
    header[1..].copy_from_slice(&(input.len() as u64).to_le_bytes());
    stream.write_all(&header).map_err(CallError::Io)?;
    stream.write_all(input).map_err(CallError::Io)
}

/// One request and its response of exactly `want` bytes.
fn call(stream: &mut TcpStream, cmd: u8, input: &[u8], want: usize) -> Result<Vec<u8>, CallError> {
    send(stream, cmd, input)?;
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).map_err(CallError::Io)?;
    let got = u64::from_le_bytes(size);
    if got != want as u64 {
        return Err(CallError::Size { want, got });
    }
    let mut out = vec![0u8; want];
    stream.read_exact(&mut out).map_err(CallError::Io)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints_are_checked_as_ggml_parses_them() {
        check_endpoint("10.0.0.2:50052").unwrap();
        check_endpoint("worker.lan:1").unwrap();
        for bad in ["10.0.0.2", ":50052", "[::1]:50052", "h:p", "h:", "h:-1"] {
            assert!(
                matches!(check_endpoint(bad), Err(ProbeError::BadEndpoint(_))),
                "{bad}"
            );
        }
        // A number that is no TCP port is said to be one, without the IPv6 hint.
        for (bad, port) in [("127.0.0.1:99999", "99999"), ("h:0", "0")] {
            let e = check_endpoint(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("rpc worker `{bad}`: port {port} is not a TCP port (1 to 65535)")
            );
        }
    }

    /// A fake rpc-server speaking the protocol's first three commands, to pin the byte layout.
    #[test]
    fn a_worker_is_asked_for_hello_device_count_and_memory() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 9];
            let mut read_req = |s: &mut TcpStream| {
                s.read_exact(&mut head).unwrap();
                let n = u64::from_le_bytes(head[1..9].try_into().unwrap()) as usize;
                let mut body = vec![0u8; n];
                s.read_exact(&mut body).unwrap();
                (head[0], body)
            };
            let reply = |s: &mut TcpStream, b: &[u8]| {
                s.write_all(&(b.len() as u64).to_le_bytes()).unwrap();
                s.write_all(b).unwrap();
            };
            let (cmd, body) = read_req(&mut s);
            assert_eq!((cmd, body.len()), (14, 24));
            let mut hello = vec![7, 0, 3, 0];
            hello.extend_from_slice(&[0; 24]);
            reply(&mut s, &hello);
            let (cmd, body) = read_req(&mut s);
            assert_eq!((cmd, body.len()), (15, 0));
            reply(&mut s, &2u32.to_le_bytes());
            for dev in 0..2u32 {
                let (cmd, body) = read_req(&mut s);
                assert_eq!((cmd, body), (11, dev.to_le_bytes().to_vec()));
                let mut m = (1000 * u64::from(dev + 1)).to_le_bytes().to_vec();
                m.extend_from_slice(&4000u64.to_le_bytes());
                reply(&mut s, &m);
            }
        });
        let w = probe(&endpoint, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert_eq!(w.version, (7, 0, 3));
        assert_eq!(
            w.devices,
            vec![
                DeviceMemory {
                    free_bytes: 1000,
                    total_bytes: 4000
                },
                DeviceMemory {
                    free_bytes: 2000,
                    total_bytes: 4000
                }
            ]
        );
        assert_eq!(w.free_bytes(), 3000);
    }

    #[test]
    fn a_silent_worker_is_busy_and_a_closed_port_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        // Accepted by the kernel (backlog), never answered: what a worker serving another
        // client looks like.
        let e = probe(&endpoint, Duration::from_millis(300)).unwrap_err();
        assert!(e.is_busy(), "{e}");
        drop(listener);
        let e = probe(&endpoint, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ProbeError::Unreachable { .. }), "{e}");
    }
}
