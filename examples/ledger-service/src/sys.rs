//! The two C library calls the service needs, declared directly so the crate has no dependencies:
//! `signal` for SIGTERM/SIGINT and `poll` for an accept loop that can notice those signals.

use std::io;
use std::os::raw::{c_int, c_short};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

// The same numbers on Linux, the BSDs and macOS.
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
/// `SIG_ERR` is `(sighandler_t) -1`.
const SIG_ERR: usize = usize::MAX;
const POLLIN: c_short = 0x1;

#[cfg(target_os = "linux")]
type NfdsT = std::os::raw::c_ulong;
#[cfg(not(target_os = "linux"))]
type NfdsT = std::os::raw::c_uint;

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: c_short,
    revents: c_short,
}

extern "C" {
    // glibc's signal() installs the handler with BSD semantics (SA_RESTART): a blocking accept()
    // would be restarted after the handler ran and never see the flag. poll() is never
    // restarted, and it has a timeout besides, so the accept loop waits in poll().
    fn signal(signum: c_int, handler: usize) -> usize;
    fn poll(fds: *mut PollFd, nfds: NfdsT, timeout: c_int) -> c_int;
}

extern "C" fn request_shutdown(_signum: c_int) {
    // Storing to an atomic is async-signal-safe; anything more (allocating, logging) is not.
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT request a clean shutdown instead of killing the process.
pub fn install_shutdown_handlers() -> io::Result<()> {
    let handler = request_shutdown as extern "C" fn(c_int) as usize;
    for signum in [SIGINT, SIGTERM] {
        // SAFETY: the handler is an `extern "C"` function that only stores to an atomic.
        if unsafe { signal(signum, handler) } == SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once SIGTERM or SIGINT has been received.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::SeqCst)
}

/// Waits until `fd` is readable or `timeout` has passed and says whether it is readable.
///
/// A wait interrupted by a signal counts as "not readable" so that the caller looks at the
/// shutdown flag right away.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = PollFd {
        fd,
        events: POLLIN,
        revents: 0,
    };
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `pollfd` is one valid, exclusively borrowed pollfd and nfds is 1.
    match unsafe { poll(&mut pollfd, 1, timeout_ms) } {
        -1 => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            }
        }
        0 => Ok(false),
        // Readable, or an error condition that the following accept() will report.
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn wait_readable_times_out_then_sees_a_pending_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        assert!(!wait_readable(fd, Duration::from_millis(10)).unwrap());

        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"x").unwrap();
        assert!(wait_readable(fd, Duration::from_secs(5)).unwrap());
    }
}
