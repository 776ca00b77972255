//! Stand-in for a backend this build cannot provide (the KVM microVM): it
//! answers every call that needs the backend with a clear error instead of
//! silently running processes unisolated.

use std::path::Path;

use async_trait::async_trait;
use cowork_policy::selection::BackendKind;
use cowork_protocol::params::StartVmParams;

use super::{Backend, BackendError, SpawnJob, Spawned};
use crate::process_events::ProcessEvents;

pub struct UnavailableBackend {
    kind: BackendKind,
    why: String,
}

impl UnavailableBackend {
    pub fn new(kind: BackendKind, why: impl Into<String>) -> Self {
        Self {
            kind,
            why: why.into(),
        }
    }
}

#[async_trait]
impl Backend for UnavailableBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn is_isolated(&self) -> bool {
        false
    }

    async fn start(&self, _params: &StartVmParams) -> Result<(), BackendError> {
        Err(BackendError::Unavailable(self.why.clone()))
    }

    async fn stop(&self) {}

    fn is_running(&self) -> bool {
        false
    }

    fn is_guest_connected(&self) -> bool {
        false
    }

    async fn spawn(&self, _job: SpawnJob, _events: ProcessEvents) -> Result<Spawned, BackendError> {
        Err(BackendError::Unavailable(self.why.clone()))
    }

    fn mount_path_reply(&self, _session: Option<&str>, _mount_name: &str, host: &Path) -> String {
        host.to_string_lossy().into_owned()
    }
}
