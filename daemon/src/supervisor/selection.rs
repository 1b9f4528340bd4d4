//! Why the resident model is what it is: the selection's reason and what its plan said more
//! memory would bring (`/r1/status` `selection`, `upgrades`, `more_memory`), the start-up choice,
//! and `auto_pull`.

use std::sync::{Arc, Mutex};

use crate::engine::LoadSpec;
use crate::planner::{self, Plan};
use crate::store::{PullSpec, PullState, Store};

use super::decide::CONFIGURED;

/// What the planner said more memory would bring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoreMemory {
    /// [`Plan::upgrades`].
    pub upgrades: Vec<planner::Upgrade>,
    /// [`Plan::more_memory`].
    pub text: String,
}

impl MoreMemory {
    /// What `plan` says.
    pub fn of(plan: &Plan) -> MoreMemory {
        MoreMemory {
            upgrades: plan.upgrades.clone(),
            text: plan.more_memory.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Selection {
    reason: Option<String>,
    more: Option<MoreMemory>,
}

/// The selection's memory, shared by the start-up choice, the supervisor and `auto_pull`.
#[derive(Debug, Default)]
pub struct Memory {
    selection: Mutex<Selection>,
    /// What more memory would bring, from the plan behind the reason a choice gave last;
    /// [`Memory::set`] takes it over when it records that reason.
    planned: Mutex<Option<(String, MoreMemory)>>,
    /// What the plan planned for the candidate a load spec came from (the per-GPU VRAM feeds
    /// the memory credit; all of it `/r1/status`).
    placement: Mutex<Option<(LoadSpec, Planned)>>,
}

/// What a plan planned for the model it chose: shown by `/r1/status` beside what the process
/// really holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Catalog variant id (`deepseek-r1:7b`).
    pub variant: String,
    /// Quantization name (`Q4_K_M`).
    pub quantization: String,
    /// RAM planned (bytes), without the policy's reserve.
    pub ram_bytes: u64,
    /// VRAM planned per GPU (bytes).
    pub vram_bytes: Vec<u64>,
    /// Where the RAM figure comes from: `"formula"` or `"backend"` (the file's backend estimate).
    pub memory_source: &'static str,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memory {
    /// The last selection's reason.
    pub fn reason(&self) -> Option<String> {
        locked(&self.selection).reason.clone()
    }

    /// What the plan that chose the resident model said more memory would bring (empty when
    /// the model was named rather than chosen).
    pub fn upgrades(&self) -> Vec<planner::Upgrade> {
        locked(&self.selection)
            .more
            .as_ref()
            .map(|m| m.upgrades.clone())
            .unwrap_or_default()
    }

    /// [`Plan::more_memory`] of the plan that chose the resident model.
    pub fn more_memory(&self) -> Option<String> {
        locked(&self.selection)
            .more
            .as_ref()
            .map(|m| m.text.clone())
    }

    /// Records why the resident model is what it is; with a reason a choice gave last through
    /// [`Memory::remember`] (or the one recorded already), also what its plan said more memory
    /// would bring; with any other reason (a model named by path), nothing about it.
    pub fn set(&self, reason: &str) {
        let planned = locked(&self.planned)
            .as_ref()
            .filter(|(r, _)| r == reason)
            .map(|(_, m)| m.clone());
        let mut selection = locked(&self.selection);
        let more = planned.or_else(|| {
            (selection.reason.as_deref() == Some(reason))
                .then(|| selection.more.clone())
                .flatten()
        });
        *selection = Selection {
            reason: Some(reason.to_owned()),
            more,
        };
    }

    /// Keeps what `plan` says about more memory for when [`Memory::set`] records `reason`; and,
    /// when `spec` was chosen as `plan`'s candidate `candidate`, where the plan put it.
    pub fn remember(&self, reason: &str, plan: &Plan, chosen: Option<(&LoadSpec, usize)>) {
        *locked(&self.planned) = Some((reason.to_owned(), MoreMemory::of(plan)));
        if let Some((spec, c)) = chosen {
            if let Some(candidate) = plan.candidates.get(c) {
                let planned = Planned {
                    variant: candidate.variant.id.to_owned(),
                    quantization: candidate.quantization.name.to_owned(),
                    ram_bytes: candidate.ram_bytes,
                    vram_bytes: candidate.vram_bytes.clone(),
                    memory_source: match candidate.memory_source {
                        planner::MemorySource::Formula => "formula",
                        planner::MemorySource::Backend { .. } => "backend",
                    },
                };
                *locked(&self.placement) = Some((spec.clone(), planned));
            }
        }
    }

    /// The planned per-GPU VRAM of `spec`, when a plan chose it.
    pub fn placement_of(&self, spec: &LoadSpec) -> Option<Vec<u64>> {
        self.planned_of(spec).map(|p| p.vram_bytes)
    }

    /// What the plan planned for `spec`, when a plan chose it.
    pub fn planned_of(&self, spec: &LoadSpec) -> Option<Planned> {
        locked(&self.placement)
            .as_ref()
            .filter(|(s, _)| s == spec)
            .map(|(_, p)| p.clone())
    }

    /// The reason with `what` appended (for `auto_pull`'s progress).
    fn amend(&self, before: &str, what: String) {
        let reason = if before.is_empty() {
            what
        } else {
            format!("{before}; {what}")
        };
        locked(&self.selection).reason = Some(reason);
    }
}

/// What to do at start: the model to load, why nothing is served (when nothing is), the pull
/// `auto_pull` asks for, and the selection's memory to hand to the supervisor.
pub struct Start {
    /// What the engine loads first.
    pub load: Option<LoadSpec>,
    /// Why nothing is served (with the config's error first), for the engine's `NoModel`.
    pub no_model_reason: Option<String>,
    /// The planner's choice to pull in the background (`[store] auto_pull`).
    pub auto_pull: Option<PullSpec>,
    /// The selection recorded.
    pub memory: Arc<Memory>,
}

impl Start {
    /// At start: a configured model (`configured`: `--model` or `[model] path`) wins; otherwise
    /// the best present R1 the store holds, or nothing with a reason that names the command that
    /// fixes it. With `auto_pull`, also the pull of the planner's choice when it is not present.
    pub async fn choose(
        store: &Arc<Store>,
        configured: Option<LoadSpec>,
        config_error: Option<String>,
    ) -> Start {
        let memory = Arc::new(Memory::default());
        if let Some(load) = configured {
            memory.set(CONFIGURED);
            return Start {
                load: Some(load),
                no_model_reason: config_error,
                auto_pull: None,
                memory,
            };
        }
        let (store, mem) = (store.clone(), memory.clone());
        let (load, reason, pull) = tokio::task::spawn_blocking(move || startup(&store, &mem))
            .await
            .unwrap_or_else(|e| (None, format!("failed to scan the model store: {e}"), None));
        tracing::info!("model selection: {reason}");
        let reason = match config_error {
            Some(c) => format!("{c}; {reason}"),
            None => reason,
        };
        Start {
            load,
            no_model_reason: Some(reason),
            auto_pull: pull,
            memory,
        }
    }
}

/// The store's best present R1 with the reason, recorded in `memory`; the pull `auto_pull` asks
/// for. Blocking.
fn startup(store: &Store, memory: &Memory) -> (Option<LoadSpec>, String, Option<PullSpec>) {
    match store.choose() {
        Ok((entries, plan, choice)) => {
            let load = choice
                .entry
                .zip(choice.candidate)
                .map(|(e, c)| (store.load_spec(&entries[e], Some(&plan.candidates[c])), c));
            let pull = choice
                .missing
                .filter(|_| store.auto_pull())
                .and_then(|ci| crate::store::pull_spec_of(&plan.candidates[ci]).ok());
            let load = if choice.remote.is_some() { None } else { load };
            memory.remember(&choice.reason, &plan, load.as_ref().map(|(s, c)| (s, *c)));
            memory.set(&choice.reason);
            (choice.remote.or(load.map(|(s, _)| s)), choice.reason, pull)
        }
        Err(e) => {
            let reason = format!("{e}; run `r1ctl use NAME` to serve a model by name");
            memory.set(&reason);
            (None, reason, None)
        }
    }
}

impl super::Supervisor {
    /// `auto_pull`: pulls `spec` in the background and, when it is in place, chooses again
    /// ([`super::Supervisor::replan_now`], so a run-time pin still wins); the best present model
    /// is served meanwhile. The selection's reason (`/r1/status`) says that the pull runs, and
    /// then how it ended: the model it brought is served, or why the pulled file cannot be, or
    /// why the pull failed.
    pub(crate) fn spawn_auto_pull(&self, spec: PullSpec) {
        let this = self.clone();
        let memory = self.inner.memory.clone();
        let label = spec.label.clone();
        tracing::info!("auto_pull: pulling {label}");
        let before = memory.reason().unwrap_or_default();
        memory.amend(&before, format!("auto_pull: pulling {label}"));
        let mut rx = self.inner.store.pull(spec);
        tokio::spawn(async move {
            while !rx.borrow_and_update().is_final() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            let end = rx.borrow().clone();
            let (path, sha256) = match end {
                PullState::Done { path, sha256, .. } => (path, sha256),
                PullState::Failed(why) => {
                    tracing::warn!("auto_pull of {label} failed: {why}");
                    memory.amend(&before, format!("auto_pull of {label} failed: {why}"));
                    return;
                }
                _ => {
                    memory.amend(
                        &before,
                        format!("auto_pull of {label} ended without a result"),
                    );
                    return;
                }
            };
            let pulled = format!(
                "auto_pull: {label} is in {}{}",
                path.display(),
                sha256
                    .map(|s| format!(" (sha256 {s} verified)"))
                    .unwrap_or_default()
            );
            let store = this.inner.store.clone();
            let unusable = tokio::task::spawn_blocking(move || {
                let entry = store.scan().into_iter().find(|e| e.path == path);
                match entry {
                    Some(e) if !e.is_usable() => {
                        Some(format!("it cannot be served: {}", e.status_text()))
                    }
                    _ => None,
                }
            })
            .await
            .unwrap_or_else(|e| Some(format!("the store scan failed: {e}")));
            if let Some(why) = unusable {
                tracing::warn!("{pulled}, but {why}");
                memory.amend(&before, format!("{pulled}, but {why}"));
                return;
            }
            // The selection again, through the decider (a pin still wins).
            if let Err(e) = this.replan_now("auto_pull brought it").await {
                memory.amend(&before, format!("{pulled}, but loading it failed: {e}"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Mode};
    use crate::hardware::Probe;

    use crate::store::tests::r1_7b;

    /// A store of `models` on the fake "workstation" machine (AMD GPU), other stores off.
    fn workstation_store(models: &std::path::Path) -> Arc<Store> {
        let mut config = Config::default();
        config.store.dir = Some(models.to_owned());
        config.store.scan_huggingface = false;
        config.store.scan_ollama = false;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/workstation");
        Store::new(
            &config,
            Mode::User,
            Probe::fake_root(root, models.to_owned()),
        )
    }

    #[test]
    fn status_keeps_what_more_memory_would_bring_only_for_the_selection_it_was_planned_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf"),
            r1_7b(576),
        )
        .unwrap();
        let store = workstation_store(dir.path());
        let memory = Memory::default();
        let (_, plan, _) = store.choose().unwrap();
        assert!(!plan.upgrades.is_empty(), "{}", plan.more_memory);
        // `r1ctl use auto`: the plan behind the reason travels with it.
        let resolved = store.resolve_use("auto").unwrap();
        let reason = resolved.reason.clone();
        assert!(reason.starts_with("deepseek-r1:7b Q4_K_M"), "{reason}");
        let (used_plan, c) = resolved.planned.as_ref().unwrap();
        memory.remember(&reason, used_plan, Some((&resolved.spec, *c)));
        memory.set(&reason);
        assert_eq!(memory.reason().as_deref(), Some(reason.as_str()));
        assert_eq!(memory.upgrades(), plan.upgrades);
        assert_eq!(memory.more_memory(), Some(plan.more_memory.clone()));
        assert_eq!(
            memory.placement_of(&resolved.spec),
            Some(used_plan.candidates[*c].vram_bytes.clone())
        );
        // The same selection again (a re-plan that keeps the model) keeps it.
        memory.set(&reason);
        assert_eq!(memory.upgrades(), plan.upgrades);
        // `choose` (the supervisor's re-plan) gives a reason that carries its plan too.
        let (_, again, choice) = store.choose().unwrap();
        memory.remember(&choice.reason, &again, None);
        memory.set("something else");
        memory.set(&choice.reason);
        assert_eq!(memory.upgrades(), again.upgrades);
        // A model named by path or name was not planned: nothing is said about more memory.
        memory.set(CONFIGURED);
        assert!(memory.upgrades().is_empty());
        assert_eq!(memory.more_memory(), None);
        // At start, the selection records its plan's upgrades.
        let fresh = Memory::default();
        let (_, reason, _) = startup(&store, &fresh);
        assert_eq!(fresh.reason(), Some(reason));
        assert_eq!(fresh.upgrades(), plan.upgrades);
    }
}
