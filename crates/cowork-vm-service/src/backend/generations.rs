//! A session's generations: what the isolating backends (a bwrap sandbox,
//! a microVM) keep per session, and how they retire them.
//!
//! A session has at most one *current* generation, the one that serves
//! spawns whose [`SandboxKey`] it serves (`SandboxKey::served_by`). A spawn
//! it cannot serve (other mounts, another allowlist) starts a new one; the
//! previous one becomes *old* and keeps running until its processes are
//! done. Old generations with nothing running, and current ones idle for
//! the backend's idle timeout, are shut down by [`Sessions::reap`].
//!
//! Starting and tearing down a session's generations is serialized by its
//! [`Slot::start`] lock; the state itself sits behind a short std mutex so
//! queries (`busy`, `newest_current`) never wait for a start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cowork_protocol::agent::{AgentStatus, method};
use serde_json::json;

use super::SpawnJob;
use super::agent_link::AgentLink;
use super::agent_spawn::SandboxKey;

/// One generation of a session: a sandbox or a VM with our agent in it.
pub trait Generation: Send + Sync + 'static {
    /// What the log calls it ("sandbox", "VM").
    const WHAT: &'static str;
    /// Whether something else replaces this kind when its agent dies
    /// (the kvm heartbeat restarts a dead VM in place): then a dead current
    /// generation is left to that, not retired by the reaper.
    const REPLACED_WHEN_DEAD: bool;

    fn link(&self) -> &AgentLink;
    /// The daemon-wide generation number (logs, newest first).
    fn number(&self) -> u64;
    /// Time since the last spawn into it.
    fn idle_for(&self) -> Duration;
    /// Ends it and everything in it.
    fn shutdown(self: &Arc<Self>);
}

/// A session's current generation and the older ones finishing.
pub struct SlotState<G> {
    pub current: Option<(SandboxKey, Arc<G>)>,
    pub old: Vec<Arc<G>>,
    /// The inputs of the spawn that started the current generation (what a
    /// restart re-creates).
    pub last_job: Option<SpawnJob>,
}

impl<G> Default for SlotState<G> {
    fn default() -> Self {
        Self {
            current: None,
            old: Vec::new(),
            last_job: None,
        }
    }
}

/// One session's generations.
pub struct Slot<G> {
    /// Serializes starting and tearing down this session's generations.
    pub start: tokio::sync::Mutex<()>,
    state: Mutex<SlotState<G>>,
}

impl<G> Default for Slot<G> {
    fn default() -> Self {
        Self {
            start: tokio::sync::Mutex::new(()),
            state: Mutex::new(SlotState::default()),
        }
    }
}

impl<G: Generation> Slot<G> {
    pub fn state(&self) -> MutexGuard<'_, SlotState<G>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every generation, current first.
    pub fn all(&self) -> Vec<Arc<G>> {
        let s = self.state();
        s.current
            .iter()
            .map(|(_, g)| g.clone())
            .chain(s.old.iter().cloned())
            .collect()
    }

    pub fn current(&self) -> Option<Arc<G>> {
        self.state().current.as_ref().map(|(_, g)| g.clone())
    }

    /// The current generation when it is alive and serves `key` (see
    /// `SandboxKey::served_by`). Call with `start` held.
    pub fn serving(&self, key: &SandboxKey, asks_for_policy: bool) -> Option<Arc<G>> {
        match &self.state().current {
            Some((current, g))
                if g.link().is_alive() && key.served_by(current, asks_for_policy) =>
            {
                Some(g.clone())
            }
            _ => None,
        }
    }

    /// Makes `g` (started for `job`, under `key`) the current generation;
    /// the previous one, if alive, finishes its processes as an old one.
    /// Call with `start` held.
    pub fn install(&self, key: SandboxKey, g: Arc<G>, job: &SpawnJob) {
        let mut state = self.state();
        if let Some((_, previous)) = state.current.replace((key, g.clone()))
            && previous.link().is_alive()
        {
            tracing::info!(
                "session {}: mounts or network policy changed, {} generation {} started; generation {} finishes its processes",
                job.session,
                G::WHAT,
                g.number(),
                previous.number()
            );
            state.old.push(previous);
        }
        state.last_job = Some(job.clone());
    }

    /// Shuts down every generation and forgets them.
    pub async fn shut_down(&self) {
        let _guard = self.start.lock().await;
        for g in self.all() {
            g.shutdown();
        }
        *self.state() = SlotState::default();
    }

    /// Shuts down the generations that have nothing running: dead ones,
    /// old ones, and the current one as `how` says. Returns whether none is
    /// left.
    pub async fn reap(&self, session: &str, how: Reap) -> bool {
        let _guard = self.start.lock().await;
        let candidates: Vec<(Arc<G>, bool)> = {
            let s = self.state();
            s.current
                .iter()
                .map(|(_, g)| (g.clone(), true))
                .chain(s.old.iter().map(|g| (g.clone(), false)))
                .collect()
        };
        for (g, is_current) in candidates {
            let dead = !g.link().is_alive();
            let retire = match verdict(how, is_current, dead, G::REPLACED_WHEN_DEAD, g.idle_for()) {
                Verdict::Keep => false,
                Verdict::Retire => true,
                Verdict::RetireIfEmpty => {
                    g.link().running_count() == 0 && has_nothing_running(g.link()).await
                }
            };
            if !retire {
                continue;
            }
            if !dead {
                tracing::info!(
                    "session {session}: shutting down idle {} (generation {})",
                    G::WHAT,
                    g.number()
                );
            }
            g.shutdown();
            let mut s = self.state();
            if s.current.as_ref().is_some_and(|(_, c)| Arc::ptr_eq(c, &g)) {
                s.current = None;
            }
            s.old.retain(|o| !Arc::ptr_eq(o, &g));
        }
        let s = self.state();
        s.current.is_none() && s.old.is_empty()
    }
}

/// What [`Slot::reap`] does with the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// The reaper's pass: shut it down once it has been idle this long
    /// with nothing running (a dead one of a kind that is replaced when
    /// dead is left to that).
    Idle(Duration),
    /// The session is going away: shut it down if nothing runs in it.
    Retire,
}

/// What the reaper does with one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Retire,
    /// Retire it if its agent reports nothing running.
    RetireIfEmpty,
}

fn verdict(
    how: Reap,
    is_current: bool,
    dead: bool,
    replaced_when_dead: bool,
    idle_for: Duration,
) -> Verdict {
    match how {
        Reap::Idle(_) if dead && is_current && replaced_when_dead => Verdict::Keep,
        _ if dead => Verdict::Retire,
        Reap::Idle(min) if is_current && idle_for < min => Verdict::Keep,
        _ => Verdict::RetireIfEmpty,
    }
}

/// Whether the agent reports no processes besides itself (a dead agent
/// has none).
async fn has_nothing_running(link: &AgentLink) -> bool {
    match link.request(method::STATUS, json!({})).await {
        Ok(v) => serde_json::from_value::<AgentStatus>(v)
            .is_ok_and(|s| s.tracked == 0 && s.other_processes == 0),
        Err(_) => !link.is_alive(),
    }
}

/// Reaps the sessions of `backend` every `tick`, until the backend is gone.
pub async fn reap_while_alive<B, G: Generation>(
    backend: Weak<B>,
    sessions_of: fn(&B) -> &Sessions<G>,
    idle_timeout: Duration,
    tick: Duration,
) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        sessions_of(&backend).reap(idle_timeout).await;
    }
}

/// Every session's generations.
pub struct Sessions<G> {
    slots: Mutex<HashMap<String, Arc<Slot<G>>>>,
}

impl<G> Default for Sessions<G> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<G: Generation> Sessions<G> {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot<G>>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's slot, made when it has none.
    pub fn slot(&self, session: &str) -> Arc<Slot<G>> {
        self.slots().entry(session.to_string()).or_default().clone()
    }

    pub fn get(&self, session: &str) -> Option<Arc<Slot<G>>> {
        self.slots().get(session).cloned()
    }

    fn snapshot(&self) -> Vec<(String, Arc<Slot<G>>)> {
        self.slots()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every generation of every session.
    pub fn all(&self) -> Vec<Arc<G>> {
        self.snapshot()
            .into_iter()
            .flat_map(|(_, slot)| slot.all())
            .collect()
    }

    /// The most recently started current generation.
    pub fn newest_current(&self) -> Option<Arc<G>> {
        self.snapshot()
            .into_iter()
            .filter_map(|(_, slot)| slot.current())
            .max_by_key(|g| g.number())
    }

    /// Whether any session's current generation is alive.
    pub fn any_current_alive(&self) -> bool {
        self.snapshot()
            .into_iter()
            .any(|(_, slot)| slot.current().is_some_and(|g| g.link().is_alive()))
    }

    /// Sessions with a live generation.
    pub fn busy(&self) -> HashSet<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, slot)| slot.all().iter().any(|g| g.link().is_alive()))
            .map(|(name, _)| name)
            .collect()
    }

    /// Shuts down everything (`stopVM`).
    pub async fn shut_down_all(&self) {
        let slots: Vec<Arc<Slot<G>>> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in slots {
            slot.shut_down().await;
        }
    }

    /// One pass of the reaper: finished old generations, and current ones
    /// idle for `idle_timeout`; sessions left with none are forgotten.
    pub async fn reap(&self, idle_timeout: Duration) {
        for (name, slot) in self.snapshot() {
            if slot.reap(&name, Reap::Idle(idle_timeout)).await {
                self.forget_if_empty(&name, &slot);
            }
        }
    }

    /// Shuts down the session's generations that have nothing running now;
    /// returns whether none is left (then the session is forgotten).
    pub async fn retire(&self, session: &str) -> bool {
        let Some(slot) = self.get(session) else {
            return true;
        };
        let empty = slot.reap(session, Reap::Retire).await;
        if empty {
            self.forget_if_empty(session, &slot);
        }
        empty
    }

    fn forget_if_empty(&self, name: &str, slot: &Arc<Slot<G>>) {
        let mut slots = self.slots();
        if slots
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, slot) && slot.all().is_empty())
        {
            slots.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_generations_the_reaper_retires() {
        const IDLE: Reap = Reap::Idle(Duration::from_secs(600));
        let short = Duration::from_secs(1);
        let long = Duration::from_secs(601);
        use Verdict::*;
        // (how, is_current, dead, replaced_when_dead, idle_for, verdict)
        let table = [
            // A dead generation goes, unless it is a current one that is
            // replaced in place (the kvm heartbeat restarts it).
            (IDLE, false, true, false, short, Retire),
            (IDLE, false, true, true, short, Retire),
            (IDLE, true, true, false, short, Retire),
            (IDLE, true, true, true, long, Keep),
            // Retiring a session takes even a dead VM awaiting restart.
            (Reap::Retire, true, true, true, short, Retire),
            // Old generations go as soon as nothing runs in them.
            (IDLE, false, false, false, short, RetireIfEmpty),
            (IDLE, false, false, true, short, RetireIfEmpty),
            // The current one only after the idle timeout...
            (IDLE, true, false, false, short, Keep),
            (IDLE, true, false, true, short, Keep),
            (IDLE, true, false, false, long, RetireIfEmpty),
            // ...or when the session is retired.
            (Reap::Retire, true, false, false, short, RetireIfEmpty),
            (Reap::Retire, false, false, true, short, RetireIfEmpty),
        ];
        for (how, is_current, dead, replaced, idle, want) in table {
            assert_eq!(
                verdict(how, is_current, dead, replaced, idle),
                want,
                "{how:?} current={is_current} dead={dead} replaced={replaced} idle={idle:?}"
            );
        }
    }
}
