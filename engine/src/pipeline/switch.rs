//! Live adapter switching.
//!
//! A request comes from the control channel (any thread); the preparer
//! thread builds the new backend (merge in memory, load) while the current
//! one keeps serving; the inference thread installs it between two windows
//! ([`Switcher::take_ready`]), so no window is lost or run twice, and the
//! requester learns the `seq` of the first event the new adapter produced.
//!
//! Latest wins: a request made while another is queued, being prepared or
//! ready to install supersedes it. The superseded requester is told so,
//! and a backend finished for a superseded request is dropped, never
//! installed: a burst of switches costs at most one wasted preparation.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emogate_infer::affect::Prepared;
use emogate_infer::affect::{AffectError, Preparer};
use serde::Serialize;

/// Outcomes kept for requesters that have not read theirs yet; a
/// requester that gave up never reads it, so the list is bounded.
const KEPT_OUTCOMES: usize = 64;

/// Why a switch request was refused at once.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// Not a loaded adapter (the message lists the loaded ones).
    #[error(transparent)]
    Unknown(#[from] AffectError),
    /// The run is over (or never started): nothing will install it.
    #[error("the run has ended: {0}")]
    Closed(String),
}

/// How a switch request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SwitchOutcome {
    /// The new backend serves from event `seq` on.
    Installed(Installed),
    /// The adapter asked for was already active and nothing else pending.
    Unchanged { active: Option<String> },
    /// A later request replaced this one before it was installed.
    Superseded { by: Option<String> },
    /// Preparing the backend failed; the previous one keeps serving.
    Failed { error: String },
}

/// A switch that took effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Installed {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `seq` of the first emotion event the new adapter produces.
    pub seq: u64,
    /// Building the backend, off the inference thread.
    pub prepare_ms: f64,
    /// From the request to the new backend installed.
    pub switch_ms: f64,
    /// Whether the switch planned a new backend; `false`: it only bound
    /// new adapter slot factors to the running one.
    pub replanned: bool,
}

/// A request accepted for preparation.
#[derive(Debug, Clone)]
pub struct Ticket {
    id: u64,
    /// The adapter asked for.
    pub target: Option<String>,
    /// The pending request this one replaced (latest wins), if any: its
    /// target.
    pub replaced: Option<Option<String>>,
}

#[derive(Debug, Clone)]
struct Request {
    id: u64,
    target: Option<String>,
    at: Instant,
}

/// A prepared switch waiting for the inference thread.
pub(crate) struct Ready {
    request: Request,
    prepare: Duration,
    replanned: bool,
    /// Taken by the inference thread to install it.
    prepared: Option<Prepared>,
}

impl Ready {
    pub(crate) fn target(&self) -> Option<String> {
        self.request.target.clone()
    }

    /// The switch to hand to [`emogate_infer::AffectModel::install`].
    pub(crate) fn take_prepared(&mut self) -> Option<Prepared> {
        self.prepared.take()
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// The newest request, not yet taken by the preparer thread.
    queued: Option<Request>,
    /// The request being prepared now.
    preparing: Option<Request>,
    /// A backend ready to install.
    ready: Option<Ready>,
    /// Outcomes by request id, oldest first.
    outcomes: VecDeque<(u64, SwitchOutcome)>,
    active: Option<String>,
    /// Set when the run ends: why.
    closed: Option<String>,
}

impl State {
    fn finish(&mut self, id: u64, outcome: SwitchOutcome) {
        if self.outcomes.len() == KEPT_OUTCOMES {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((id, outcome));
    }

    /// Whether `name` is active or the target of a pending request.
    fn in_use(&self, name: &str) -> bool {
        let is = |t: &Option<String>| t.as_deref() == Some(name);
        is(&self.active)
            || self.queued.as_ref().is_some_and(|r| is(&r.target))
            || self.preparing.as_ref().is_some_and(|r| is(&r.target))
            || self.ready.as_ref().is_some_and(|r| is(&r.request.target))
    }
}

struct Shared {
    preparer: Preparer,
    state: Mutex<State>,
    changed: Condvar,
}

/// The switching hub shared by the control channel, the preparer thread
/// and the inference thread. Cloning gives another handle to the same hub.
#[derive(Clone)]
pub struct Switcher {
    shared: Arc<Shared>,
}

impl Switcher {
    pub(crate) fn new(preparer: Preparer, active: Option<String>) -> Self {
        Switcher {
            shared: Arc::new(Shared {
                preparer,
                state: Mutex::new(State {
                    active,
                    ..State::default()
                }),
                changed: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below is a few field assignments that leave the
        // state consistent whenever a panic could strike, so go on.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds backends for the model: adding and dropping adapters goes
    /// through it.
    pub fn preparer(&self) -> &Preparer {
        &self.shared.preparer
    }

    /// The active adapter (`None`: the base model).
    pub fn active(&self) -> Option<String> {
        self.state().active.clone()
    }

    /// The pending switch for `/status`: `{"to", "state"}` with state
    /// `queued`, `preparing` or `ready` (prepared, installed before the next
    /// window); `null` when none is pending.
    pub fn pending_json(&self) -> serde_json::Value {
        let state = self.state();
        let (to, phase) = if let Some(r) = &state.ready {
            (&r.request.target, "ready")
        } else if let Some(r) = &state.queued {
            (&r.target, "queued")
        } else if let Some(r) = &state.preparing {
            (&r.target, "preparing")
        } else {
            return serde_json::Value::Null;
        };
        serde_json::json!({"to": to, "state": phase})
    }

    /// Whether adapter `name` is active or the target of a pending switch
    /// (so a reload must not drop it).
    pub fn in_use(&self, name: &str) -> bool {
        self.state().in_use(name)
    }

    /// Asks for `target` (`None`: the base model) to become active.
    ///
    /// # Errors
    /// [`SwitchError::Unknown`] for a name that is not loaded (listing the
    /// loaded ones); [`SwitchError::Closed`] once the run has ended.
    pub fn request(&self, target: Option<String>) -> Result<Ticket, SwitchError> {
        if let Some(name) = &target {
            self.shared.preparer.check_adapter(name)?;
        }
        let mut state = self.state();
        if let Some(why) = &state.closed {
            return Err(SwitchError::Closed(why.clone()));
        }
        let id = state.next_id;
        state.next_id += 1;
        let nothing_pending =
            state.queued.is_none() && state.preparing.is_none() && state.ready.is_none();
        if nothing_pending && state.active == target {
            let active = state.active.clone();
            state.finish(id, SwitchOutcome::Unchanged { active });
            return Ok(Ticket {
                id,
                target,
                replaced: None,
            });
        }
        let superseded = SwitchOutcome::Superseded { by: target.clone() };
        let mut replaced = None;
        if let Some(old) = state.queued.take() {
            replaced = Some(old.target.clone());
            state.finish(old.id, superseded.clone());
        }
        if let Some(old) = state.ready.take() {
            replaced = Some(old.request.target.clone());
            state.finish(old.request.id, superseded);
        }
        if let Some(old) = &state.preparing {
            // Superseded when its preparation finishes and finds this
            // request queued (see `prepare_loop`).
            replaced = Some(old.target.clone());
        }
        state.queued = Some(Request {
            id,
            target: target.clone(),
            at: Instant::now(),
        });
        self.shared.changed.notify_all();
        Ok(Ticket {
            id,
            target,
            replaced,
        })
    }

    /// Waits up to `timeout` for the outcome of `ticket`; `None` if it is
    /// still pending then.
    pub fn wait(&self, ticket: &Ticket, timeout: Duration) -> Option<SwitchOutcome> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if let Some(i) = state.outcomes.iter().position(|(id, _)| *id == ticket.id) {
                return state.outcomes.remove(i).map(|(_, o)| o);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts the thread that prepares requested backends. It ends when
    /// the switcher is [closed](Switcher::close).
    pub(crate) fn spawn_preparer(&self) -> std::io::Result<JoinHandle<()>> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("adapter-prepare".into())
            .spawn(move || this.prepare_loop())
    }

    fn prepare_loop(&self) {
        loop {
            let request = {
                let mut state = self.state();
                loop {
                    if state.closed.is_some() {
                        return;
                    }
                    if let Some(r) = state.queued.take() {
                        state.preparing = Some(r.clone());
                        break r;
                    }
                    state = self
                        .shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let started = Instant::now();
            let result = self.shared.preparer.prepare(request.target.as_deref());
            let prepare = started.elapsed();
            let mut state = self.state();
            state.preparing = None;
            if let Some(why) = state.closed.clone() {
                state.finish(
                    request.id,
                    SwitchOutcome::Failed {
                        error: format!("the run has ended: {why}"),
                    },
                );
            } else if let Some(newer) = &state.queued {
                let by = newer.target.clone();
                state.finish(request.id, SwitchOutcome::Superseded { by });
            } else {
                match result {
                    Ok(prepared) => {
                        state.ready = Some(Ready {
                            request,
                            prepare,
                            replanned: prepared.replanned(),
                            prepared: Some(prepared),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(adapter = ?request.target, error = %e, "preparing the adapter failed; the current one keeps serving");
                        state.finish(
                            request.id,
                            SwitchOutcome::Failed {
                                error: e.to_string(),
                            },
                        );
                    }
                }
            }
            self.shared.changed.notify_all();
        }
    }

    /// A prepared backend, for the inference thread to install before its
    /// next window (then it calls [`Switcher::installed`]).
    pub(crate) fn take_ready(&self) -> Option<Ready> {
        self.state().ready.take()
    }

    /// Records that `ready` now serves, from event `seq` on; returns what
    /// the switch did.
    pub(crate) fn installed(&self, ready: &Ready, seq: u64) -> Installed {
        let mut state = self.state();
        let installed = Installed {
            from: state.active.clone(),
            to: ready.request.target.clone(),
            seq,
            prepare_ms: ready.prepare.as_secs_f64() * 1e3,
            switch_ms: ready.request.at.elapsed().as_secs_f64() * 1e3,
            replanned: ready.replanned,
        };
        state.active = ready.request.target.clone();
        state.finish(
            ready.request.id,
            SwitchOutcome::Installed(installed.clone()),
        );
        self.shared.changed.notify_all();
        installed
    }

    /// Records that installing `ready` failed: the previous adapter keeps
    /// serving.
    pub(crate) fn install_failed(&self, ready: &Ready, error: String) {
        let mut state = self.state();
        state.finish(ready.request.id, SwitchOutcome::Failed { error });
        self.shared.changed.notify_all();
    }

    /// Ends switching: pending requests fail with `why`, the preparer
    /// thread returns, later requests are refused.
    pub(crate) fn close(&self, why: &str) {
        let mut state = self.state();
        state.closed = Some(why.to_string());
        let failed = SwitchOutcome::Failed {
            error: format!("the run has ended: {why}"),
        };
        if let Some(r) = state.queued.take() {
            state.finish(r.id, failed.clone());
        }
        if let Some(r) = state.ready.take() {
            state.finish(r.request.id, failed);
        }
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emogate_infer::affect::{AffectModel, ModelSpec};

    fn reference() -> AffectModel {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let models = root.join("models/reference");
        AffectModel::load(&ModelSpec {
            path: models.join("base/emogate-base.onnx"),
            adapters: vec![
                ("affect-gate".into(), models.join("adapters/affect-gate")),
                ("affect-all".into(), models.join("adapters/affect-all")),
            ],
            ..ModelSpec::default()
        })
        .expect("the reference model loads")
    }

    /// Plays the inference thread: installs what is ready, as between windows.
    fn serve_until(switcher: &Switcher, seq: u64, done: impl Fn() -> bool) -> Vec<Installed> {
        let mut installed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() && Instant::now() < deadline {
            if let Some(ready) = switcher.take_ready() {
                installed.push(switcher.installed(&ready, seq));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        installed
    }

    #[test]
    fn a_queued_request_is_superseded_and_only_the_latest_is_installed() {
        let model = reference();
        let switcher = Switcher::new(model.preparer(), None);
        // Both queued before the preparer runs: the first never prepares.
        let gate = switcher.request(Some("affect-gate".into())).unwrap();
        let all_linear = switcher.request(Some("affect-all".into())).unwrap();
        assert_eq!(gate.replaced, None);
        assert_eq!(all_linear.replaced, Some(Some("affect-gate".into())));
        assert_eq!(
            switcher.wait(&gate, Duration::ZERO),
            Some(SwitchOutcome::Superseded {
                by: Some("affect-all".into())
            })
        );
        assert_eq!(switcher.pending_json()["to"], "affect-all");
        let preparer = switcher.spawn_preparer().unwrap();
        let installed = serve_until(&switcher, 7, || switcher.active().is_some());
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[0].to.as_deref(), Some("affect-all"));
        assert_eq!(installed[0].seq, 7);
        match switcher.wait(&all_linear, Duration::from_secs(1)) {
            Some(SwitchOutcome::Installed(i)) => assert_eq!(i, installed[0]),
            other => panic!("{other:?}"),
        }
        assert!(switcher.pending_json().is_null());
        // The active one again: nothing to do.
        let again = switcher.request(Some("affect-all".into())).unwrap();
        assert!(matches!(
            switcher.wait(&again, Duration::ZERO),
            Some(SwitchOutcome::Unchanged { .. })
        ));
        assert!(switcher.in_use("affect-all") && !switcher.in_use("affect-gate"));
        switcher.close("test over");
        preparer.join().unwrap();
    }

    #[test]
    fn unknown_names_are_refused_and_closing_fails_what_is_pending() {
        let model = reference();
        let switcher = Switcher::new(model.preparer(), Some("affect-gate".into()));
        let e = switcher
            .request(Some("nope".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loaded: affect-all, affect-gate"), "{e}");
        let pending = switcher.request(None).unwrap();
        switcher.close("stopped");
        match switcher.wait(&pending, Duration::ZERO) {
            Some(SwitchOutcome::Failed { error }) => assert!(error.contains("stopped")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            switcher.request(None),
            Err(SwitchError::Closed(_))
        ));
        // Never installed: still gate.
        assert_eq!(switcher.active().as_deref(), Some("affect-gate"));
    }
}
