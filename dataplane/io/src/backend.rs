//! Which IO backend drives the shards, and whether io_uring can be used here.
//!
//! The probe sets up a small io_uring (the `io_uring_setup` system call, as every io_uring
//! program must) and classifies a failure by its cause, so an operator is told what to change
//! rather than shown an errno.

use core::fmt;
use core::str::FromStr;
use std::io;

/// The IO backend of the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring when it works here, otherwise epoll (the reason is logged and kept in
    /// [`crate::Server::fallback_reason`]).
    #[default]
    Auto,
    /// io_uring (glommio executors pinned to cores); refuse to start if it is unavailable.
    Uring,
    /// epoll (mio), even where io_uring works.
    Epoll,
}

impl Backend {
    /// The name used on the command line and in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown backend {other:?}: expected auto, uring or epoll"
            )),
        }
    }
}

/// Why io_uring cannot be used on this machine. The `Display` text says why and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UringUnavailable {
    /// The kernel has no `io_uring_setup` (ENOSYS): older than 5.1, built without
    /// `CONFIG_IO_URING`, or a seccomp filter that answers ENOSYS.
    NotSupported,
    /// The `kernel.io_uring_disabled` sysctl forbids it (1: only members of
    /// `kernel.io_uring_group`; 2: nobody).
    DisabledBySysctl {
        /// The sysctl's value.
        value: u8,
    },
    /// EPERM without the sysctl saying so: a seccomp profile (container runtimes block
    /// io_uring by default) or an LSM policy.
    PermissionDenied,
    /// The locked-memory limit is too low for the rings and their buffers.
    MemlockTooLow {
        /// The soft `RLIMIT_MEMLOCK`, bytes.
        limit: u64,
        /// What the backend needs, bytes.
        needed: u64,
    },
    /// Another failure setting up the ring or the executor.
    Other {
        /// The OS error code, when there was one.
        errno: Option<i32>,
        /// What failed.
        message: String,
    },
}

impl fmt::Display for UringUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSupported => f.write_str(
                "io_uring is not supported by this kernel (io_uring_setup: ENOSYS): it needs \
                 Linux 5.11 or newer built with CONFIG_IO_URING, and no seccomp filter hiding \
                 it; upgrade the kernel or use --backend epoll",
            ),
            Self::DisabledBySysctl { value } => write!(
                f,
                "io_uring is disabled by the sysctl kernel.io_uring_disabled = {value}; set it \
                 to 0 (sysctl -w kernel.io_uring_disabled=0){}, or use --backend epoll",
                if *value == 1 {
                    " or add the server's user to the group in kernel.io_uring_group"
                } else {
                    ""
                }
            ),
            Self::PermissionDenied => f.write_str(
                "io_uring is not permitted (io_uring_setup: EPERM), most likely by a seccomp \
                 profile (containers block io_uring by default) or a security module; allow \
                 the io_uring_setup, io_uring_enter and io_uring_register system calls (e.g. a \
                 custom seccomp profile), or use --backend epoll",
            ),
            Self::MemlockTooLow { limit, needed } => write!(
                f,
                "the locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes, io_uring needs at \
                 least {needed}; raise it (ulimit -l, LimitMEMLOCK= in systemd, or \
                 /etc/security/limits.conf), or use --backend epoll"
            ),
            Self::Other { errno, message } => {
                write!(f, "io_uring could not be set up: {message}")?;
                if let Some(errno) = errno {
                    write!(f, " (errno {errno})")?;
                }
                f.write_str("; use --backend epoll")
            }
        }
    }
}

impl std::error::Error for UringUnavailable {}

/// Locked memory the io_uring backend needs per shard (glommio refuses below 512 KiB).
pub(crate) const MEMLOCK_NEEDED: u64 = 512 * 1024;

const ENOSYS: i32 = 38;
const EPERM: i32 = 1;
const ENOMEM: i32 = 12;

/// Sets up a small io_uring and drops it: `Ok` if the io_uring backend can run here.
pub fn probe_uring() -> Result<(), UringUnavailable> {
    // glommio refuses to build an executor below this limit, even for root (whose rings the
    // kernel itself would not count against it).
    if let Some(limit) = memlock_limit()
        && limit < MEMLOCK_NEEDED
    {
        return Err(UringUnavailable::MemlockTooLow {
            limit,
            needed: MEMLOCK_NEEDED,
        });
    }
    // On a thread of its own: the kernel tears a ring down asynchronously and may signal its
    // creator with task work, which would interrupt a blocking call of the caller (EINTR).
    let setup = std::thread::Builder::new()
        .name("commucat-uring-probe".into())
        .spawn(|| io_uring::IoUring::new(8).map(drop))
        .map_err(|error| UringUnavailable::Other {
            errno: error.raw_os_error(),
            message: format!("cannot start the probe thread: {error}"),
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")));
    setup.map_err(|error| classify(&error, sysctl_disabled(), memlock_limit()))
}

/// The cause of a failed `io_uring_setup`, given the sysctl and the memlock limit.
pub(crate) fn classify(
    error: &io::Error,
    sysctl: Option<u8>,
    memlock: Option<u64>,
) -> UringUnavailable {
    match (error.raw_os_error(), sysctl) {
        (Some(EPERM), Some(value @ (1 | 2))) => UringUnavailable::DisabledBySysctl { value },
        (Some(EPERM), _) => UringUnavailable::PermissionDenied,
        (Some(ENOSYS), _) => UringUnavailable::NotSupported,
        (Some(ENOMEM), _) => UringUnavailable::MemlockTooLow {
            limit: memlock.unwrap_or(0),
            needed: MEMLOCK_NEEDED,
        },
        (errno, _) => UringUnavailable::Other {
            errno,
            message: error.to_string(),
        },
    }
}

/// `kernel.io_uring_disabled`, when the kernel has it.
fn sysctl_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited or unknown).
pub(crate) fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max locked memory"))?;
    line["Max locked memory".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPUs this process may run on (its affinity mask), ascending; empty if unknown.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(list) = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    parse_cpu_list(list.trim())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub(crate) fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.trim().parse::<usize>(), last.trim().parse()) {
            // Bounded: a CPU list never names more CPUs than the machine has.
            cpus.extend((first..=last).take(4096));
        }
    }
    cpus
}

/// What `Server::start` may fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// `--backend uring` was asked for and io_uring cannot be used here.
    Uring(UringUnavailable),
    /// Binding, threads or another OS resource failed.
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uring(reason) => write!(f, "the io_uring backend cannot start: {reason}"),
            Self::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Uring(reason) => Some(reason),
            Self::Io(error) => Some(error),
        }
    }
}

impl From<io::Error> for StartError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_unknown_names_are_refused() {
        for backend in [Backend::Auto, Backend::Uring, Backend::Epoll] {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
        assert_eq!("io_uring".parse::<Backend>(), Ok(Backend::Uring));
        let error = "kqueue".parse::<Backend>().unwrap_err();
        assert!(error.contains("auto, uring or epoll"), "{error}");
    }

    #[test]
    fn setup_failures_are_classified_by_cause() {
        let eperm = io::Error::from_raw_os_error(EPERM);
        assert_eq!(
            classify(&eperm, Some(2), None),
            UringUnavailable::DisabledBySysctl { value: 2 }
        );
        assert_eq!(
            classify(&eperm, Some(0), None),
            UringUnavailable::PermissionDenied
        );
        assert_eq!(
            classify(&io::Error::from_raw_os_error(ENOSYS), Some(0), None),
            UringUnavailable::NotSupported
        );
        assert_eq!(
            classify(&io::Error::from_raw_os_error(ENOMEM), None, Some(65536)),
            UringUnavailable::MemlockTooLow {
                limit: 65536,
                needed: MEMLOCK_NEEDED
            }
        );
        assert!(matches!(
            classify(&io::Error::from_raw_os_error(22), None, None),
            UringUnavailable::Other {
                errno: Some(22),
                ..
            }
        ));
    }

    #[test]
    fn every_reason_says_what_to_change() {
        let reasons = [
            UringUnavailable::NotSupported,
            UringUnavailable::DisabledBySysctl { value: 1 },
            UringUnavailable::PermissionDenied,
            UringUnavailable::MemlockTooLow {
                limit: 1,
                needed: 2,
            },
            UringUnavailable::Other {
                errno: None,
                message: "x".into(),
            },
        ];
        for reason in reasons {
            assert!(reason.to_string().contains("--backend epoll"), "{reason}");
        }
        assert!(
            UringUnavailable::DisabledBySysctl { value: 2 }
                .to_string()
                .contains("io_uring_disabled=0")
        );
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert_eq!(parse_cpu_list("0,2-4,7"), vec![0, 2, 3, 4, 7]);
        assert!(parse_cpu_list("").is_empty());
    }
}
