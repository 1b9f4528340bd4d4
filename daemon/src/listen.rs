//! TCP beside the Unix socket: opt in (`[server] listen`, `--listen`, or TCP sockets passed by
//! systemd), the same routes, and safe by default.
//!
//! - Nothing listens on TCP unless asked.
//! - A loopback address (`127.0.0.0/8`, `::1`) may be served without a key: it is as reachable as
//!   the Unix socket's mode allows, give or take the other local users.
//! - Any other address (`0.0.0.0`, a LAN address) is refused at start unless `[server]
//!   api_key_file` names a readable file holding a key ([`check`]).
//! - Once a key is configured every TCP listener asks for it (`Authorization: Bearer KEY`,
//!   checked by [`crate::api::auth`]); the Unix socket never does (its file mode is its gate).
//! - The key is never logged: [`ApiKey`]'s `Debug` does not show it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors setting up TCP.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The key file cannot be read.
    // The OS error is in the message and not a `source`: anyhow's chain would print it twice.
    #[error("failed to read the API key file {path} ([server] api_key_file): {error}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A listen address that is not `HOST:PORT`, or whose host name does not resolve.
    #[error("invalid listen address {addr:?} ([server] listen, --listen): {reason}; write HOST:PORT, e.g. localhost:11434, 127.0.0.1:11434 or [::1]:11434")]
    Address {
        /// The address as written.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The key file holds no key.
    #[error("the API key file {0} ([server] api_key_file) is empty")]
    EmptyKey(PathBuf),
    /// A non-loopback address without a key.
    #[error(
        "refusing to listen on {0} without an API key: it is not a loopback address, so other \
         machines could use r1d; set [server] api_key_file to a file holding a key (clients send \
         it as `Authorization: Bearer KEY`), or listen on 127.0.0.1 / [::1]"
    )]
    NeedsKey(SocketAddr),
    /// TCP sockets are forbidden here (systemd's `RestrictAddressFamilies=`).
    #[error(
        "failed to listen on {0}: r1d may not create TCP sockets here (the r1d.service unit \
         keeps RestrictAddressFamilies=AF_UNIX AF_NETLINK); install the drop-in \
         /usr/share/doc/r1d/examples/tcp.conf as /etc/systemd/system/r1d.service.d/tcp.conf, \
         then `sudo systemctl daemon-reload && sudo systemctl restart r1d`"
    )]
    Forbidden(SocketAddr),
    /// Binding failed.
    #[error("failed to listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
}

/// The API key TCP clients must present. Its `Debug` hides it, so it cannot reach a log line by
/// accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

impl ApiKey {
    /// Reads the key from `path`: its content without surrounding whitespace (a trailing
    /// newline is usual).
    ///
    /// # Errors
    /// [`ListenError::KeyFile`] when it cannot be read, [`ListenError::EmptyKey`] when it is
    /// blank.
    pub fn read(path: &Path) -> Result<ApiKey, ListenError> {
        let text = std::fs::read_to_string(path).map_err(|error| ListenError::KeyFile {
            path: path.to_owned(),
            error,
        })?;
        ApiKey::new(text.trim()).ok_or_else(|| ListenError::EmptyKey(path.to_owned()))
    }

    /// A key from its text; `None` when blank.
    pub fn new(key: &str) -> Option<ApiKey> {
        (!key.trim().is_empty()).then(|| ApiKey(key.trim().to_owned()))
    }

    /// Whether an `Authorization` header value presents this key (`Bearer KEY`, the scheme
    /// case-insensitive). Compares in time independent of where the first difference is.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(scheme) = authorization.get(..7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let presented = authorization[7..].trim_ascii();
        let expected = self.0.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The socket addresses of `addrs` (`HOST:PORT`; a host name such as `localhost` stands for
/// every address it resolves to), in order, without repeats. Blocking (name resolution).
///
/// # Errors
/// [`ListenError::Address`] naming the address: no port, or a name that does not resolve.
pub fn resolve(addrs: &[String]) -> Result<Vec<SocketAddr>, ListenError> {
    use std::net::ToSocketAddrs as _;
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        let invalid = |reason: String| ListenError::Address {
            addr: addr.clone(),
            reason,
        };
        let found: Vec<SocketAddr> = addr
            .as_str()
            .to_socket_addrs()
            .map_err(|e| invalid(e.to_string()))?
            .collect();
        if found.is_empty() {
            return Err(invalid("it resolves to no address".into()));
        }
        for a in found {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Whether `ip` only reaches this machine.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses a non-loopback address when there is no key. Pure.
///
/// # Errors
/// [`ListenError::NeedsKey`] naming the first such address.
pub fn check(addrs: &[SocketAddr], key: Option<&ApiKey>) -> Result<(), ListenError> {
    match addrs.iter().find(|a| !is_loopback(a.ip())) {
        Some(addr) if key.is_none() => Err(ListenError::NeedsKey(*addr)),
        _ => Ok(()),
    }
}

/// Binds each of `addrs` (IPv6 addresses only for IPv6).
///
/// # Errors
/// [`ListenError::Bind`] naming the address.
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>, ListenError> {
    addrs
        .iter()
        .map(|&addr| {
            let bind_err = |source: std::io::Error| {
                if source.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()) {
                    ListenError::Forbidden(addr)
                } else {
                    ListenError::Bind {
                        addr,
                        error: source,
                    }
                }
            };
            let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            listener.set_nonblocking(true).map_err(bind_err)?;
            Ok(listener)
        })
        .collect()
}

/// The TCP listeners r1d serves: the ones systemd passed, then the configured ones systemd did
/// not pass (an address systemd already listens on is not bound twice). Checks the policy
/// ([`check`]) over all of them, and logs each address (never the key).
///
/// # Errors
/// See [`check`] and [`bind`].
pub fn listeners(
    passed: Vec<std::net::TcpListener>,
    configured: &[SocketAddr],
    key: Option<&ApiKey>,
) -> Result<Vec<std::net::TcpListener>, ListenError> {
    let passed_addrs: Vec<SocketAddr> = passed.iter().filter_map(|l| l.local_addr().ok()).collect();
    let to_bind: Vec<SocketAddr> = configured
        .iter()
        .filter(|a| !passed_addrs.contains(a))
        .copied()
        .collect();
    let mut all_addrs = passed_addrs.clone();
    all_addrs.extend(&to_bind);
    check(&all_addrs, key)?;
    let mut listeners = passed;
    listeners.extend(bind(&to_bind)?);
    for l in &listeners {
        let addr = l.local_addr().map_err(|error| ListenError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            error,
        })?;
        let how = if passed_addrs.contains(&addr) {
            " (socket activation)"
        } else {
            ""
        };
        let auth = if key.is_some() {
            "API key required"
        } else {
            "no API key"
        };
        tracing::info!("listening on {addr} (TCP{how}, {auth})");
    }
    Ok(listeners)
}

/// Serves `router` on every listener until `shutdown` is cancelled; returns when all have ended.
///
/// # Errors
/// The first I/O error of an accept loop.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let listener = TcpListener::from_std(listener)?;
        let router = router.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(std::io::Error::other)??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_resolve_to_each_address_and_bad_ones_are_named() {
        let addrs = resolve(&["localhost:11434".into(), "127.0.0.1:11434".into()]).unwrap();
        assert!(
            addrs.contains(&"127.0.0.1:11434".parse().unwrap()),
            "{addrs:?}"
        );
        assert!(
            addrs
                .iter()
                .all(|a| is_loopback(a.ip()) && a.port() == 11434),
            "{addrs:?}"
        );
        assert_eq!(
            addrs.iter().filter(|a| a.ip().is_ipv4()).count(),
            1,
            "no repeats: {addrs:?}"
        );
        let e = resolve(&["localhost".into()]).unwrap_err().to_string();
        assert!(
            e.contains("\"localhost\"") && e.contains("HOST:PORT"),
            "{e}"
        );
        let e = resolve(&["r1d-test.invalid:80".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("r1d-test.invalid:80"), "{e}");
        // A missing key file says its OS error once, however it is printed.
        let e = anyhow::Error::from(ApiKey::read(Path::new("/nonexistent/key")).unwrap_err());
        let text = format!("{e:#}");
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_needs_no_key_anything_else_does() {
        let key = ApiKey::new("k");
        for a in [
            "127.0.0.1:11434",
            "127.8.9.1:1",
            "[::1]:11434",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(check(&[addr(a)], None).is_ok(), "{a}");
        }
        for a in [
            "0.0.0.0:11434",
            "[::]:11434",
            "192.168.1.2:80",
            "[fe80::1]:1",
        ] {
            let e = check(&[addr("127.0.0.1:1"), addr(a)], None).unwrap_err();
            assert!(matches!(e, ListenError::NeedsKey(x) if x == addr(a)), "{a}");
            assert!(e.to_string().contains("api_key_file"));
            assert!(check(&[addr(a)], key.as_ref()).is_ok());
        }
    }

    #[test]
    fn the_key_is_compared_whole_and_never_shown() {
        let key = ApiKey::new(" s3cret\n").unwrap();
        assert!(key.accepts(b"Bearer s3cret"));
        assert!(key.accepts(b"bearer s3cret "));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Basic s3cret",
            b"s3cret",
            b"",
        ] {
            assert!(!key.accepts(wrong), "{}", String::from_utf8_lossy(wrong));
        }
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(ApiKey::new(" \n").is_none());
    }

    #[test]
    fn a_key_file_is_read_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "abc\n").unwrap();
        assert_eq!(ApiKey::read(&file).unwrap(), ApiKey::new("abc").unwrap());
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(ApiKey::read(&file), Err(ListenError::EmptyKey(_))));
        assert!(matches!(
            ApiKey::read(&dir.path().join("none")),
            Err(ListenError::KeyFile { .. })
        ));
    }

    #[test]
    fn an_address_systemd_passed_is_not_bound_again() {
        let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = passed.local_addr().unwrap();
        let all = listeners(vec![passed], &[a, addr("127.0.0.1:0")], None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].local_addr().unwrap(), a);
    }
}
