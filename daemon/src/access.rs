//! Who may manage r1d — one rule for every transport.
//!
//! Answers are open to whoever can reach a transport (the socket's group `r1d`, the D-Bus policy's
//! group for `Chat1`). Managing the service — load, use, unload, reload, pull — is allowed to:
//! root; the uid r1d runs as; else, when an [`Authority`] is available (polkit on the system bus),
//! whom it authorizes for [`MANAGE_ACTION`]; else nobody. The caller's identity comes from the
//! kernel, never from the request: `SO_PEERCRED` on the Unix socket, the bus daemon's
//! `GetConnectionUnixUser` on D-Bus. A caller without one (TCP) may not manage.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// polkit action that allows managing r1d (`systemd/org.r1d.R1.policy`).
pub use r1d_client::dbus::MANAGE_ACTION;

/// Who asks, as the kernel or the bus daemon vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's uid.
    pub uid: u32,
    /// How polkit names it.
    pub subject: Subject,
    /// Whether the caller allows polkit to ask its user for a password (D-Bus
    /// `ALLOW_INTERACTIVE_AUTHORIZATION`); never over HTTP.
    pub interactive: bool,
}

/// A caller as polkit's `CheckAuthorization` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A D-Bus connection (`system-bus-name`), e.g. `:1.42`.
    BusName(String),
    /// A process (`unix-process`), from the Unix socket's peer credentials; `start_time` (clock
    /// ticks since boot, `/proc/PID/stat` field 22) tells it from a later process with the same
    /// pid.
    Process {
        /// Process id.
        pid: u32,
        /// Start time in clock ticks since boot.
        start_time: u64,
    },
}

impl Caller {
    /// The peer of a Unix socket connection: its uid and process from `SO_PEERCRED`.
    pub fn unix_peer(uid: u32, pid: Option<u32>) -> Caller {
        let pid = pid.unwrap_or(0);
        Caller {
            uid,
            subject: Subject::Process {
                pid,
                start_time: process_start_time(pid).unwrap_or(0),
            },
            interactive: false,
        }
    }
}

/// `/proc/PID/stat` field 22 (`starttime`), which follows the command name in parentheses (that
/// may itself hold spaces and parentheses, hence the last `)`); see proc(5).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; starttime is field 22, so the 20th after the name.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Why an [`Authority`] gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorityError {
    /// There is no authority to ask (polkit is not installed or not running).
    Absent,
    /// Asking failed; the message says why.
    Failed(String),
}

/// The answer of an [`Authority`]: authorized or not, or why there is no answer.
pub type Verdict<'a> = Pin<Box<dyn Future<Output = Result<bool, AuthorityError>> + Send + 'a>>;

/// Something that can authorize callers for [`MANAGE_ACTION`] beyond root and r1d's own uid:
/// polkit, asked over the system bus by `api::dbus` (the only module that knows D-Bus).
pub trait Authority: Send + Sync {
    /// Whether `caller` may manage r1d.
    fn check<'a>(&'a self, caller: &'a Caller) -> Verdict<'a>;
}

/// The rule, with r1d's own uid and, once the system bus is up, polkit.
pub struct Policy {
    own_uid: u32,
    authority: OnceLock<Arc<dyn Authority>>,
}

impl Policy {
    /// The rule for an r1d running as `own_uid`, with no authority yet.
    pub fn new(own_uid: u32) -> Policy {
        Policy {
            own_uid,
            authority: OnceLock::new(),
        }
    }

    /// Installs the authority (once; later calls are ignored).
    pub fn set_authority(&self, authority: Arc<dyn Authority>) {
        let _ = self.authority.set(authority);
    }

    /// Whether `caller` may do `what` (e.g. `"unloading the model"`).
    ///
    /// # Errors
    /// A message for the caller that names what was refused, the caller's uid and what would be
    /// needed.
    pub async fn authorize(&self, caller: Option<&Caller>, what: &str) -> Result<(), String> {
        let Some(caller) = caller else {
            return Err(format!(
                "{what} needs a caller r1d can identify (the Unix socket or D-Bus); this \
                 connection has no peer credentials"
            ));
        };
        let uid = caller.uid;
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        let Some(authority) = self.authority.get() else {
            return Err(format!(
                "{what} needs root or uid {} (r1d's own); the caller is uid {uid}",
                self.own_uid
            ));
        };
        match authority.check(caller).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{what} needs root or polkit authorization for {MANAGE_ACTION}; uid {uid} is not \
                 authorized"
            )),
            Err(AuthorityError::Absent) => Err(format!(
                "{what} needs root: polkit is not available to authorize uid {uid} for \
                 {MANAGE_ACTION}"
            )),
            Err(AuthorityError::Failed(e)) => Err(format!(
                "{what}: the polkit check for uid {uid} failed: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<bool, AuthorityError>);

    impl Authority for Fixed {
        fn check<'a>(&'a self, _caller: &'a Caller) -> Verdict<'a> {
            let answer = self.0.clone();
            Box::pin(async move { answer })
        }
    }

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            subject: Subject::BusName(":1.7".into()),
            interactive: false,
        }
    }

    #[tokio::test]
    async fn root_and_r1ds_own_uid_may_manage_others_need_the_authority() {
        let policy = Policy::new(990);
        assert!(policy.authorize(Some(&caller(0)), "x").await.is_ok());
        assert!(policy.authorize(Some(&caller(990)), "x").await.is_ok());
        let e = policy
            .authorize(Some(&caller(1000)), "unloading the model")
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "unloading the model needs root or uid 990 (r1d's own); the caller is uid 1000"
        );
        let e = policy.authorize(None, "pulling").await.unwrap_err();
        assert!(e.contains("no peer credentials"), "{e}");

        policy.set_authority(Arc::new(Fixed(Ok(true))));
        assert!(policy.authorize(Some(&caller(1000)), "x").await.is_ok());
    }

    #[tokio::test]
    async fn the_authoritys_no_or_absence_is_a_refusal_naming_the_action() {
        for (answer, expected) in [
            (Ok(false), "is not authorized"),
            (Err(AuthorityError::Absent), "polkit is not available"),
            (
                Err(AuthorityError::Failed("timeout".into())),
                "failed: timeout",
            ),
        ] {
            let policy = Policy::new(990);
            policy.set_authority(Arc::new(Fixed(answer)));
            let e = policy
                .authorize(Some(&caller(1000)), "x")
                .await
                .unwrap_err();
            assert!(e.contains(expected), "{e}");
            assert!(policy.authorize(Some(&caller(0)), "x").await.is_ok());
        }
    }

    #[test]
    fn a_processs_start_time_is_read_past_its_name() {
        let me = std::process::id();
        let t = process_start_time(me).expect("this process has a start time");
        assert!(t > 0);
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
