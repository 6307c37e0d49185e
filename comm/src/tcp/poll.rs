//! `poll(2)` over a few sockets: how a thread in a blocking receive sleeps until one of the
//! connections it reads itself has bytes (std has no way to wait on several sockets at once).

use std::os::fd::RawFd;
use std::time::Duration;

#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::{c_int, c_short, c_ulong};

    /// `struct pollfd` of `<poll.h>`.
    #[repr(C)]
    pub(super) struct PollFd {
        pub(super) fd: c_int,
        pub(super) events: c_short,
        pub(super) revents: c_short,
    }

    pub(super) const POLLIN: c_short = 0x1;

    unsafe extern "C" {
        /// `int poll(struct pollfd *fds, nfds_t nfds, int timeout)`; `nfds_t` is `unsigned
        /// long` in glibc and musl.
        pub(super) fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    }
}

/// Sleeps until one of `fds` is readable (has bytes, or has been closed or has failed) or
/// `timeout` passes (rounded up to a millisecond; zero only looks); sets `ready[i]` for each
/// readable `fds[i]`.
/// An interrupted or failed poll returns early with every entry set, so the caller looks at
/// all of them.
#[cfg(target_os = "linux")]
pub(crate) fn wait_readable(fds: &[RawFd], timeout: Duration, ready: &mut Vec<bool>) {
    use sys::{POLLIN, PollFd, poll};
    let mut p: Vec<PollFd> = fds
        .iter()
        .map(|&fd| PollFd {
            fd,
            events: POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: `p` holds `p.len()` initialised `pollfd` structures, alive and unaliased for the
    // whole call; poll(2) reads them and writes only their `revents`. The descriptors belong to
    // sockets the caller keeps open during the call (a closed one is reported, not touched).
    let n = unsafe { poll(p.as_mut_ptr(), p.len() as std::ffi::c_ulong, ms) };
    ready.clear();
    ready.extend(p.iter().map(|q| n < 0 || q.revents != 0));
}

/// Elsewhere: a short sleep, after which the caller looks at every socket.
#[cfg(not(target_os = "linux"))]
pub(crate) fn wait_readable(fds: &[RawFd], timeout: Duration, ready: &mut Vec<bool>) {
    if !timeout.is_zero() {
        std::thread::sleep(timeout.min(Duration::from_micros(50)));
    }
    ready.clear();
    ready.extend(fds.iter().map(|_| true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn wakes_for_bytes_and_times_out_without() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let mut ready = Vec::new();
        let t = std::time::Instant::now();
        wait_readable(&[b.as_raw_fd()], Duration::from_millis(20), &mut ready);
        assert!(
            t.elapsed() >= Duration::from_millis(19),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(ready, [false]);
        a.write_all(b"x").unwrap();
        wait_readable(&[b.as_raw_fd()], Duration::from_secs(5), &mut ready);
        assert_eq!(ready, [true]);
    }
}
