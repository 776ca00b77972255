//! Session keyrings: what a sandbox does not inherit.
//!
//! A process possesses its session keyring, and through it the keys of the
//! login session it came from. The daemon starts every sandbox from a
//! thread of its own that has joined a fresh, empty, anonymous session
//! keyring ([`spawner`](crate::sys::spawner)): the sandboxes possess that
//! one, never the user's. Session keyrings are per thread (they live in a
//! thread's credentials), so the daemon's other threads, and the host
//! backend's processes, keep the user's.
//!
//! One keyring for all sandboxes, not one each: each key counts against
//! the user's kernel quota (`/proc/sys/kernel/keys/maxkeys`, 200 by
//! default, shared with every other program of the user), and a keyring
//! made inside a sandbox's user namespace cannot be shared by name. The
//! sandboxes cannot use it anyway: seccomp refuses `keyctl`, `add_key` and
//! `request_key`. A sandbox started otherwise (the spawner could not join
//! one) joins its own at start, as the agent always did.

use std::io;

/// Set by the daemon in a sandbox agent's environment when the agent
/// already has the daemon's private keyring.
pub const INHERITED_ENV: &str = "COWORK_AGENT_KEYRING";
const INHERITED_VALUE: &str = "private";

/// The environment entry telling a sandbox's agent its keyring is private.
pub fn inherited_env() -> (String, String) {
    (INHERITED_ENV.to_string(), INHERITED_VALUE.to_string())
}

/// Whether this process (a sandbox's agent) was started with a private
/// keyring already.
pub fn inherited_private() -> bool {
    std::env::var(INHERITED_ENV).is_ok_and(|v| v == INHERITED_VALUE)
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: a new anonymous session
/// keyring for the calling thread and everything it starts.
pub fn join_new_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for a new anonymous keyring; no memory is
    // passed to the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Kernels built without keys support have nothing to leak.
        Some(libc::ENOSYS) => Ok(()),
        Some(libc::EDQUOT) => Err(io::Error::other(format!(
            "{e}: the user's kernel key quota is used up (see /proc/key-users; \
             /proc/sys/kernel/keys/maxkeys is 200 by default)"
        ))),
        _ => Err(e),
    }
}

/// Joins a private session keyring on the calling thread (a sandbox
/// spawner's); whether it did (else each sandbox joins its own: logged).
pub fn join_for_sandboxes() -> bool {
    match join_new_session_keyring() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "no private session keyring for the sandboxes (each joins its own): {e}"
            );
            false
        }
    }
}
