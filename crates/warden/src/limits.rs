//! File descriptors: the process's limit, raised at startup, and how many sessions fit in it.
//!
//! Every live session (connecting, showing a QR code, connected) holds one descriptor, its
//! WebSocket; the session database is shared by all of them. Everything else the daemon opens
//! is bounded and kept in a [`Reserve`], so the sessions can never take the descriptors the
//! control socket needs: a start beyond the capacity is refused (`capacity`) instead of failing
//! later with `EMFILE` somewhere arbitrary.

use rlimit::Resource;

/// Descriptors one live session holds: its WebSocket.
pub const PER_SESSION: u64 = 1;

/// Descriptors the process holds whatever it serves: stdin, stdout and stderr (3), the
/// sessions folder's lock (1), the session database with its WAL and shared memory (3), the
/// log file and its successor during a rotation (2), the async runtime's epoll, waker and
/// signal pipe (4), the systemd notification socket (1), a configuration re-read on SIGHUP (1),
/// and one spare.
pub const PROCESS: u64 = 16;

/// Room for the unforeseen: DNS lookups while sessions connect, files read for a moment,
/// connections closing while new ones open.
pub const MARGIN: u64 = 64;

/// The soft and hard `RLIMIT_NOFILE`, before and after [`raise_nofile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to without privileges).
    pub hard: u64,
    /// Why the soft limit could not be raised, if it could not.
    pub error: Option<String>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Does not call `setrlimit` when there is
/// nothing to raise (systemd's `LimitNOFILE=N` sets both to N), so a seccomp filter that denies
/// `@resources` is never tripped.
pub fn raise_nofile() -> std::io::Result<FdLimit> {
    let (before, hard) = Resource::NOFILE.get()?;
    let mut limit = FdLimit {
        before,
        soft: before,
        hard,
        error: None,
    };
    if before < hard {
        match Resource::NOFILE.set(hard, hard) {
            Ok(()) => limit.soft = hard,
            Err(e) => limit.error = Some(e.to_string()),
        }
    }
    Ok(limit)
}

/// The descriptors kept for everything but the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    /// [`PROCESS`].
    pub process: u64,
    /// The control socket's listener and its `max_clients` clients.
    pub control: u64,
    /// The HTTP listener and its `[http] max_connections` connections (the gateway refuses
    /// more; 0 when HTTP is off).
    pub http: u64,
    /// [`MARGIN`].
    pub margin: u64,
}

impl Reserve {
    /// The reserve for a daemon with `max_clients` control clients, and HTTP with at most
    /// that many connections (`None`: HTTP off).
    pub fn new(max_clients: usize, http_connections: Option<usize>) -> Self {
        Self {
            process: PROCESS,
            control: 1 + max_clients as u64,
            http: http_connections.map_or(0, |n| 1 + n as u64),
            margin: MARGIN,
        }
    }

    /// All of it.
    pub fn total(&self) -> u64 {
        self.process + self.control + self.http + self.margin
    }
}

/// How many sessions may be live at once: what the soft limit leaves after the reserve, one
/// descriptor each, and no more than `max_sessions` when that is not 0.
pub fn capacity(soft_limit: u64, reserve: &Reserve, max_sessions: usize) -> usize {
    let derived = soft_limit.saturating_sub(reserve.total()) / PER_SESSION;
    let derived = usize::try_from(derived).unwrap_or(usize::MAX);
    if max_sessions == 0 {
        derived
    } else {
        derived.min(max_sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_counts_the_socket_http_and_a_margin() {
        let reserve = Reserve::new(256, Some(256));
        assert_eq!(reserve.total(), 16 + 257 + 257 + 64);
        assert_eq!(Reserve::new(8, None).total(), 16 + 9 + 64);
        assert_eq!(Reserve::new(8, Some(1000)).total(), 16 + 9 + 1001 + 64);
    }

    #[test]
    fn capacity_is_what_the_limit_leaves_capped_by_max_sessions() {
        let reserve = Reserve::new(256, Some(256));
        // The machine: ulimit -n 20000.
        assert_eq!(capacity(20_000, &reserve, 0), 20_000 - 594);
        assert_eq!(capacity(20_000, &reserve, 3_000), 3_000);
        assert_eq!(capacity(20_000, &reserve, 50_000), 20_000 - 594);
        // Systemd's LimitNOFILE=65536.
        assert_eq!(capacity(65_536, &reserve, 0), 65_536 - 594);
        // Below the reserve: nothing fits, whatever max_sessions says.
        assert_eq!(capacity(500, &reserve, 0), 0);
        assert_eq!(capacity(500, &reserve, 10), 0);
        // Unlimited (never on Linux, but not an overflow either).
        assert!(capacity(u64::MAX, &reserve, 0) > 1_000_000);
    }

    #[test]
    fn raising_never_lowers_and_reports_both_limits() {
        let limit = raise_nofile().unwrap();
        assert!(limit.soft >= limit.before);
        assert!(limit.soft <= limit.hard);
        if limit.error.is_none() {
            assert_eq!(limit.soft, limit.hard);
        }
    }
}
