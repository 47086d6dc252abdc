//! `reload` (control request) and SIGHUP: re-read `--config` and apply
//! what a running engine can change.
//!
//! * adapters added to the file become available, removed ones are
//!   dropped, ones whose folder changed are loaded again (all or nothing:
//!   one bad folder, or removing the active adapter, changes nothing);
//! * a changed `active` switches to it (unless `--active` was given);
//! * every other changed key is named in `restart_needed`.
//!
//! A file that no longer parses leaves the settings in force and reports
//! the error. Adapters given with `--adapter` stay whatever the file says.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use emogate_engine::config::RunConfig;
use emogate_engine::control::{Command, Controller};
use emogate_engine::pipeline::{PipelineStatus, Switcher};
use serde_json::{Value, json};

/// What a reload compares with.
struct Applied {
    /// Adapter name → folder, as loaded now.
    adapters: BTreeMap<String, PathBuf>,
    /// The file's `active` as last applied.
    active: Option<String>,
}

pub struct Reloader {
    path: PathBuf,
    /// The file as read at start: settings that need a restart are
    /// compared with it (they are what is in force).
    started: RunConfig,
    /// `--adapter` flags: they override the file's entries of that name.
    flag_adapters: Vec<(String, PathBuf)>,
    /// `--active` was given: the file's `active` does not apply.
    flag_active: bool,
    applied: Mutex<Applied>,
    switcher: Switcher,
    status: Arc<PipelineStatus>,
    /// Answers the switch a changed `active` asks for.
    controller: Mutex<Option<Arc<Controller>>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        started: RunConfig,
        flag_adapters: Vec<(String, PathBuf)>,
        flag_active: bool,
        switcher: Switcher,
        status: Arc<PipelineStatus>,
    ) -> Self {
        let adapters = effective_adapters(&started, &flag_adapters);
        let active = started.active.clone();
        Reloader {
            path,
            started,
            flag_adapters,
            flag_active,
            applied: Mutex::new(Applied { adapters, active }),
            switcher,
            status,
            controller: Mutex::new(None),
        }
    }

    /// The controller a changed `active` is switched through (set once the
    /// controller exists, which itself holds this reloader).
    pub fn set_controller(&self, controller: Arc<Controller>) {
        *self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(controller);
    }

    /// Re-reads the file and applies it; the outcome is also kept for
    /// `/status` (`last_reload`) and logged.
    ///
    /// # Errors
    /// A message naming the file and what is wrong; nothing is changed.
    pub fn reload(&self) -> Result<Value, String> {
        let outcome = self.apply();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let record = match &outcome {
            Ok(v) => {
                tracing::info!(result = %v, "config reloaded");
                json!({"ok": true, "unix_time": at, "result": v})
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the settings in force stay");
                json!({"ok": false, "unix_time": at, "error": e})
            }
        };
        self.status.set_last_reload(record);
        outcome
    }

    fn apply(&self) -> Result<Value, String> {
        let file = RunConfig::load(&self.path).map_err(|e| e.to_string())?;
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let want = effective_adapters(&file, &self.flag_adapters);
        let removed: Vec<&String> = applied
            .adapters
            .keys()
            .filter(|n| !want.contains_key(*n))
            .collect();
        if let Some(busy) = removed.iter().find(|n| self.switcher.in_use(n)) {
            return Err(format!(
                "{}: adapter `{busy}` is active (or being switched to) and cannot be removed: \
                 switch to another first; nothing was changed",
                self.path.display()
            ));
        }
        let to_load: Vec<(&String, &PathBuf)> = want
            .iter()
            .filter(|(n, dir)| applied.adapters.get(*n) != Some(*dir))
            .collect();
        let preparer = self.switcher.preparer();
        let mut loaded = Vec::new();
        for (name, dir) in &to_load {
            let adapter = preparer.load_adapter(dir).map_err(|e| {
                format!(
                    "{}: adapter `{name}`: {e}; nothing was changed",
                    self.path.display()
                )
            })?;
            loaded.push((name.to_string(), adapter));
        }
        let added: Vec<String> = to_load
            .iter()
            .filter(|(n, _)| !applied.adapters.contains_key(*n))
            .map(|(n, _)| n.to_string())
            .collect();
        let reloaded: Vec<String> = to_load
            .iter()
            .filter(|(n, _)| applied.adapters.contains_key(*n))
            .map(|(n, _)| n.to_string())
            .collect();
        let removed: Vec<String> = removed.into_iter().cloned().collect();
        for (name, adapter) in loaded {
            preparer.insert_adapter(&name, adapter);
        }
        for name in &removed {
            preparer.remove_adapter(name);
        }
        applied.adapters = want;
        self.status.set_adapter_names(preparer.adapter_names());

        let mut reply = json!({
            "config": self.path.display().to_string(),
            "added": added,
            "removed": removed,
            "reloaded": reloaded,
            "restart_needed": self.started.changed_keys(&file),
        });
        if !self.flag_active && file.active != applied.active {
            applied.active = file.active.clone();
            drop(applied);
            let controller = self
                .controller
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let (Some(controller), Some(fields)) = (controller, reply.as_object_mut()) {
                fields.insert(
                    "switch".into(),
                    controller.run(&Command::Adapter(file.active.clone())),
                );
            }
        }
        Ok(reply)
    }
}

/// The file's adapters with `--adapter` flags applied over them.
fn effective_adapters(file: &RunConfig, flags: &[(String, PathBuf)]) -> BTreeMap<String, PathBuf> {
    let mut adapters = file.adapters.clone();
    for (name, dir) in flags {
        adapters.insert(name.clone(), dir.clone());
    }
    adapters
}
