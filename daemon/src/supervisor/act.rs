//! Acting on decisions: what is wanted (asking the store when the decider says so), loading it
//! through the engine's queue, pins (`r1ctl use`, `load`, `unload`) and the events and selection
//! each load leaves behind.

use super::decide::{self, file_name, Pin, Step, Want, Wanted};
use super::events::{Event, EventKind};
use super::{one_line, Supervisor, SupervisorError};
use crate::engine::{model_name, EngineError, EngineState, LoadSpec};

impl Supervisor {
    /// One line about the resident model, for a reload that did not change it.
    pub(super) fn model_line(&self) -> String {
        match &self.inner.engine.snapshot().model {
            Some((info, _)) => format!("kept {}", model_name(info)),
            None => "no model is resident".into(),
        }
    }

    /// What should be resident now ([`decide::want`]), asking the store when the pin is a name
    /// or nothing is pinned or configured.
    pub(super) async fn wanted(&self) -> Result<Wanted, SupervisorError> {
        let config = self.config();
        let pinned = self.state().pinned.clone();
        let store = self.inner.store.clone();
        let memory = self.inner.memory.clone();
        // The resident model, so a re-plan keeps it through a wobble of the measured bandwidth.
        let serving = self
            .inner
            .engine
            .snapshot()
            .spec
            .map(|s| std::path::PathBuf::from(s.params.path));
        match decide::want(pinned.as_ref(), (self.inner.configured_model)(&config)) {
            Want::Known(wanted) => Ok(wanted),
            Want::Resolve(name) => tokio::task::spawn_blocking(move || {
                let r = store.resolve_use(&name).map_err(SupervisorError::Choose)?;
                if let Some((plan, c)) = &r.planned {
                    memory.remember(&r.reason, plan, Some((&r.spec, *c)));
                }
                Ok(Wanted {
                    spec: Some(r.spec),
                    reason: r.reason,
                })
            })
            .await
            .map_err(|e| SupervisorError::Task(e.to_string()))?,
            Want::Plan => tokio::task::spawn_blocking(move || {
                let (entries, plan, choice) = store
                    .choose_serving(serving.as_deref())
                    .map_err(SupervisorError::Choose)?;
                let chosen = choice
                    .entry
                    .zip(choice.candidate)
                    .filter(|_| choice.remote.is_none())
                    .map(|(e, c)| (store.load_spec(&entries[e], Some(&plan.candidates[c])), c));
                memory.remember(&choice.reason, &plan, chosen.as_ref().map(|(s, c)| (s, *c)));
                Ok(Wanted {
                    spec: choice.remote.or(chosen.map(|(s, _)| s)),
                    reason: choice.reason,
                })
            })
            .await
            .map_err(|e| SupervisorError::Task(e.to_string()))?,
        }
    }

    /// Carries out [`decide::step`] for `wanted`: loads it when it differs from the resident
    /// model. `forced`: the resident model no longer fits, running answers end. Returns one line
    /// saying what happened. `acting` is released once the load is queued, so a newer decision
    /// (another config edit) can supersede a slow load instead of waiting for it.
    ///
    /// # Errors
    /// [`SupervisorError::Engine`]: the load failed (the previous model serves again when it
    /// could be loaded).
    pub(super) async fn apply(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        wanted: Wanted,
        forced: Option<String>,
        why: &str,
    ) -> Result<String, SupervisorError> {
        let engine = &self.inner.engine;
        let snap = engine.snapshot();
        // A resident remote that fails its health checks answers nothing: unload it (the state
        // becomes `no-model`, as at start with the same config) unless something else loads.
        if let Some(why) = self.dead_remote(snap.spec.as_ref(), &wanted) {
            drop(acting);
            let name = snap
                .model
                .as_ref()
                .map(|(i, _)| model_name(i))
                .unwrap_or_default();
            tracing::warn!("unloading {name}: {why}");
            engine.unload_because(why.clone()).await?;
            self.inner.memory.set(&wanted.reason);
            let mut e = Event::new(EventKind::Swap, format!("unloaded {name}: {why}"));
            e.model = Some(name.clone());
            self.emit(e);
            return Ok(format!("unloaded {name}: {why}"));
        }
        let spec = match decide::step(
            &wanted,
            snap.state == EngineState::Ready,
            snap.queued_load.is_some(),
            snap.spec.as_ref(),
        ) {
            // Nothing present fits: keep what is served rather than serving nothing.
            Step::Keep => {
                return Ok(match &snap.model {
                    Some((info, _)) => format!(
                        "kept {} (nothing better is present: {})",
                        model_name(info),
                        wanted.reason
                    ),
                    None => format!("no model: {}", wanted.reason),
                })
            }
            Step::AlreadyServed => {
                self.inner.memory.set(&wanted.reason);
                return Ok(self.model_line());
            }
            Step::Load(spec) => spec,
        };
        let from = snap.model.as_ref().map(|(i, _)| model_name(i));
        let to = file_name(&spec.params.path);
        let message = match &from {
            Some(from) => format!("swapping {from} for {to}: {why}"),
            None => format!("loading {to}: {why}"),
        };
        tracing::info!("{message}");
        let mut e = Event::new(EventKind::Swap, message);
        e.model = Some(to.clone());
        self.emit(e);
        self.update_view(|v| {
            v.better = None;
            v.pending = None;
        });
        self.state().hysteresis.pending = None;
        if let Some(reason) = &forced {
            engine.preempt(reason);
        }
        // What the file says against the load (a directory that is no model, a context beyond
        // the trained one) is refused before the engine unloads anything for it.
        let started = match crate::control::check_spec(&spec) {
            Ok(()) => engine.start_load(spec).await,
            Err(reason) => Err(EngineError::LoadFailed { reason }),
        };
        drop(acting);
        let result = match started {
            Ok(outcome) => outcome.await.unwrap_or(Err(EngineError::ShuttingDown)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.inner.memory.set(&wanted.reason);
                let now = engine.snapshot();
                let name = now.model.as_ref().map(|(i, _)| model_name(i)).unwrap_or(to);
                let mut e = Event::new(EventKind::Swap, format!("serving {name}"));
                e.model = Some(name.clone());
                self.emit(e);
                Ok(format!("serving {name}"))
            }
            Err(err) => {
                let text = err.to_string();
                tracing::error!("{text}");
                if let Some((info, _)) = &engine.snapshot().model {
                    self.inner.memory.set(&format!(
                        "{} kept serving: {to} failed to load ({})",
                        model_name(info),
                        one_line(&text)
                    ));
                }
                let mut e = Event::new(EventKind::Swap, format!("failed: {text}"));
                e.error = Some(text);
                self.emit(e);
                Err(err.into())
            }
        }
    }

    /// Why the resident model must be unloaded: it is a `[[remote]]` that fails its health
    /// check (or left the config) and `wanted` loads nothing else instead (nothing, or the same
    /// remote because it is pinned). `None` when the resident model can answer, or when
    /// `wanted` replaces it anyway.
    fn dead_remote(&self, resident: Option<&LoadSpec>, wanted: &Wanted) -> Option<String> {
        use crate::backend::remote;
        let resident = resident.filter(|s| s.backend.as_deref() == Some(remote::BACKEND))?;
        if wanted.spec.as_ref().is_some_and(|w| w != resident) {
            return None;
        }
        let name = resident
            .params
            .path
            .strip_prefix(remote::PATH_PREFIX)
            .unwrap_or(&resident.params.path);
        let views = self
            .inner
            .store
            .remotes()
            .map(|r| r.views())
            .unwrap_or_default();
        let failure = match views.iter().find(|v| v.config.name() == name) {
            // Healthy, or not checked since a reload changed its table: the next check says.
            Some(v) if v.health.ok || v.health.checked_at.is_none() => return None,
            Some(v) => format!(
                "remote {name} ({}) fails its health check: {}",
                v.config.url,
                v.health.reason.as_deref().unwrap_or("unhealthy")
            ),
            None => format!("remote {name} is no longer in the config"),
        };
        Some(match &wanted.spec {
            None => wanted.reason.clone(),
            Some(_) => format!(
                "{failure}; it is served again when its health check passes ({})",
                wanted.reason
            ),
        })
    }

    /// `r1ctl use NAME`: pins a variant or model and loads it; `auto` drops the pin and loads
    /// what the config or the planner wants; an absolute path loads that file (as D-Bus `Use`
    /// takes it). Returns why it was chosen.
    ///
    /// # Errors
    /// [`SupervisorError::Store`] (unknown, not present, does not fit; `auto` with nothing to
    /// serve), [`SupervisorError::Choose`] (the probe failed), [`SupervisorError::Engine`] (the
    /// load failed: the previous model serves again).
    pub async fn use_model(&self, name: &str) -> Result<String, SupervisorError> {
        let acting = self.inner.acting.lock().await;
        let name = name.trim();
        if name.starts_with('/') {
            // A file by its path, as D-Bus `Use` takes it: the same as `POST /r1/load`.
            let spec = LoadSpec {
                params: crate::engine::LoadParams {
                    path: name.to_owned(),
                    ..Default::default()
                },
                backend: None,
            };
            let pin = Pin::Spec(spec.clone());
            let reason = format!("{name} was loaded on request");
            return self.pinned_load(acting, pin, spec, reason).await;
        }
        if name.eq_ignore_ascii_case("auto") {
            self.set_pin(None);
            let wanted = self.wanted().await?;
            let Some(spec) = wanted.spec else {
                return Err(crate::store::StoreError::Unusable {
                    name: "auto".into(),
                    reason: wanted.reason,
                }
                .into());
            };
            return self.load_now(acting, spec, wanted.reason).await;
        }
        let store = self.inner.store.clone();
        let memory = self.inner.memory.clone();
        let query = name.to_owned();
        let resolved = tokio::task::spawn_blocking(move || {
            let r = store.resolve_use(&query)?;
            if let Some((plan, c)) = &r.planned {
                memory.remember(&r.reason, plan, Some((&r.spec, *c)));
            }
            Ok::<_, crate::store::StoreError>(r)
        })
        .await
        .map_err(|e| SupervisorError::Task(e.to_string()))??;
        let pin = Pin::Name(name.to_owned());
        self.pinned_load(acting, pin, resolved.spec, resolved.reason)
            .await
    }

    /// Chooses again now and loads the choice when it differs from the resident model (after
    /// `auto_pull` brought a file): the pin, the configured model or the planner's best present
    /// one. Returns one line saying what happened.
    ///
    /// # Errors
    /// Why the choice could not be made, or the load error.
    pub async fn replan_now(&self, why: &str) -> Result<String, SupervisorError> {
        let acting = self.inner.acting.lock().await;
        let wanted = self.wanted().await?;
        self.apply(acting, wanted, None, why).await
    }

    /// `POST /r1/load` / D-Bus `Load`: loads `spec` and keeps it through re-plans (until `r1ctl
    /// use auto` or a config edit of the model).
    ///
    /// # Errors
    /// [`SupervisorError::Engine`]: the load failed (the previous model serves again).
    pub async fn load(&self, spec: LoadSpec) -> Result<String, SupervisorError> {
        let acting = self.inner.acting.lock().await;
        let reason = format!("{} was loaded on request", spec.params.path);
        self.pinned_load(acting, Pin::Spec(spec.clone()), spec, reason)
            .await
    }

    /// `POST /r1/unload` / D-Bus `Unload`: unloads the model and serves nothing until `r1ctl use`
    /// or a config edit of the model.
    ///
    /// # Errors
    /// [`SupervisorError::Engine`] with [`EngineError::ShuttingDown`].
    pub async fn unload(&self) -> Result<(), SupervisorError> {
        let _acting = self.inner.acting.lock().await;
        self.set_pin(Some(Pin::Unloaded));
        Ok(self.inner.engine.unload().await?)
    }

    /// Pins `pin` and loads `spec`; when the load fails, the pin before it comes back (unless
    /// a newer decision pinned something else meanwhile).
    async fn pinned_load(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        pin: Pin,
        spec: LoadSpec,
        reason: String,
    ) -> Result<String, SupervisorError> {
        let before = self.set_pin(Some(pin.clone()));
        let result = self.load_now(acting, spec, reason).await;
        if result.is_err() && self.state().pinned.as_ref() == Some(&pin) {
            self.set_pin(before);
        }
        result
    }

    /// Sets the pin (dropping any pending re-plan); returns the one before.
    pub(super) fn set_pin(&self, pin: Option<Pin>) -> Option<Pin> {
        let shown = pin.as_ref().map(Pin::shown);
        let before = {
            let mut st = self.state();
            st.hysteresis.pending = None;
            std::mem::replace(&mut st.pinned, pin)
        };
        self.update_view(|v| {
            v.pinned = shown;
            v.better = None;
            v.pending = None;
        });
        before
    }

    /// Loads `spec` now (through the engine's queue), records why and says so in events.
    async fn load_now(
        &self,
        acting: tokio::sync::MutexGuard<'_, ()>,
        spec: LoadSpec,
        reason: String,
    ) -> Result<String, SupervisorError> {
        let to = file_name(&spec.params.path);
        let mut e = Event::new(
            EventKind::Swap,
            format!("loading {to}: asked for ({reason})"),
        );
        e.model = Some(to.clone());
        self.emit(e);
        let started = match crate::control::check_spec(&spec) {
            Ok(()) => self.inner.engine.start_load(spec).await,
            Err(reason) => Err(EngineError::LoadFailed { reason }),
        };
        drop(acting);
        let result = match started {
            Ok(outcome) => outcome.await.unwrap_or(Err(EngineError::ShuttingDown)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.inner.memory.set(&reason);
                let name = self
                    .inner
                    .engine
                    .snapshot()
                    .model
                    .map(|(i, _)| model_name(&i))
                    .unwrap_or(to);
                let mut e = Event::new(EventKind::Swap, format!("serving {name}"));
                e.model = Some(name);
                self.emit(e);
                Ok(reason)
            }
            Err(err) => {
                let mut e = Event::new(
                    EventKind::Swap,
                    format!("failed: {}", one_line(&err.to_string())),
                );
                e.error = Some(err.to_string());
                self.emit(e);
                Err(err.into())
            }
        }
    }
}
