//! Wiring a sandbox's network to the allowlist proxy.
//!
//! Every isolating sandbox has a private network namespace (loopback
//! only); its one way out is the proxy of `cowork-netproxy`, which
//! enforces the spawn's `allowedDomains` and dials from the host. How
//! connections reach it is the transport of the backend, behind one
//! interface, `cowork_netproxy`'s: a bwrap sandbox's agent hands its two
//! listening sockets over (`serve_listener` here); a VM carries each
//! connection as a stream over its channel (`serve_stream`). The policy,
//! the resolver, the denial reporting and the environment are the same.

use std::sync::Arc;

use cowork_netproxy::{
    DenialDedup, DenialEvent, DenialSink, OwnAddresses, Protocol, ProxyContext, serve_listener,
};
use cowork_policy::net::AllowList;
use tokio::task::AbortHandle;

use super::agent_link::ProxyListeners;

/// Told of the first denial of each (session, host): how `run` prints its
/// hint on stderr.
pub type DenialHook = Arc<dyn Fn(&DenialEvent) + Send + Sync>;

/// How refusals are explained and reported (the daemon's defaults, or
/// `run`'s).
#[derive(Clone)]
pub struct EgressSettings {
    /// Goes into every refusal (`{host}` is replaced by the host).
    pub hint: String,
    pub hook: Option<DenialHook>,
}

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            hint: CLIENT_HINT.to_string(),
            hook: None,
        }
    }
}

/// The daemon's side of every sandbox's network.
#[derive(Clone)]
pub struct Egress {
    own: OwnAddresses,
    hint: Arc<str>,
    sink: Arc<Denials>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("hint", &self.hint)
            .field("own_addresses", &self.own.snapshot())
            .finish_non_exhaustive()
    }
}

/// Logs each (session, host) denial once at info level, and tells the hook.
struct Denials {
    dedup: DenialDedup,
    hook: Option<DenialHook>,
}

impl DenialSink for Denials {
    fn denied(&self, event: &DenialEvent) {
        if self.dedup.first_time(&event.session, event.host()) {
            tracing::info!(
                "session {}: network egress to {}:{} blocked: {}",
                event.session,
                event.host(),
                event.port(),
                event.reason()
            );
            if let Some(hook) = &self.hook {
                hook(event);
            }
        } else {
            tracing::debug!(
                "session {}: egress to {} blocked again",
                event.session,
                event.denial.target
            );
        }
    }
}

/// How a blocked host can be allowed, shown in the proxy's 403.
pub const CLIENT_HINT: &str =
    "allow it in Claude's network settings (the session's allowed domains)";

impl Egress {
    pub fn new(settings: &EgressSettings) -> Self {
        let EgressSettings { hint, hook } = settings.clone();
        let own = OwnAddresses::from_system().unwrap_or_else(|e| {
            tracing::warn!("cannot read this host's addresses (they are refused anyway): {e}");
            OwnAddresses::default()
        });
        Egress {
            own,
            hint: Arc::from(hint.as_str()),
            sink: Arc::new(Denials {
                dedup: DenialDedup::default(),
                hook,
            }),
        }
    }

    /// Serves a sandbox's two listeners under `allowlist`; abort the
    /// returned tasks when the sandbox goes away (their connections end
    /// with them).
    pub fn serve(
        &self,
        session: &str,
        allowlist: Arc<AllowList>,
        listeners: ProxyListeners,
    ) -> std::io::Result<Vec<AbortHandle>> {
        // Addresses move (DHCP, VPNs): read them again for each sandbox.
        if let Err(e) = self.own.refresh() {
            tracing::debug!("refreshing this host's addresses: {e}");
        }
        let sink: Arc<dyn DenialSink> = self.sink.clone();
        let ctx = ProxyContext::new(session, allowlist)
            .with_hint(self.hint.clone())
            .with_own_addresses(self.own.clone())
            .with_denial_sink(sink);
        let http = tokio::net::TcpListener::from_std(listeners.http)?;
        let socks = tokio::net::TcpListener::from_std(listeners.socks)?;
        Ok(vec![
            tokio::spawn(serve_listener(http, Protocol::Http, ctx.clone())).abort_handle(),
            tokio::spawn(serve_listener(socks, Protocol::Socks5, ctx)).abort_handle(),
        ])
    }

    /// The proxy's context for one VM's streams (the same policy,
    /// addresses and denial reporting as [`Self::serve`]).
    pub fn stream_context(&self, session: &str, allowlist: Arc<AllowList>) -> ProxyContext {
        if let Err(e) = self.own.refresh() {
            tracing::debug!("refreshing this host's addresses: {e}");
        }
        let sink: Arc<dyn DenialSink> = self.sink.clone();
        ProxyContext::new(session, allowlist)
            .with_hint(self.hint.clone())
            .with_own_addresses(self.own.clone())
            .with_denial_sink(sink)
    }

    /// Forgets which hosts a session was already told about.
    pub fn forget(&self, session: &str) {
        self.sink.dedup.forget_session(session);
    }
}
