//! The `r1d` binary: parses the command line, sets up logging, and wires config, plugins, engine
//! and the HTTP socket together. No logic of its own lives here.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use r1d::backend::PluginHost;
use r1d::config::{self, Config, Mode};
use r1d::control::{Control, LoadOptions, PlannerState};
use r1d::engine::{Engine, EngineConfig, LoadSpec};
use r1d::hardware::Probe;
use tokio_util::sync::CancellationToken;

/// r1d — serves DeepSeek-R1 (or any GGUF model) to the programs of this machine over a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (default: /etc/r1d/r1d.toml as root, $XDG_CONFIG_HOME/r1d/r1d.toml otherwise).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Model to load (overrides [model] path).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Backend plugin to use (overrides [model] backend), e.g. llamacpp.
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Context length in tokens (overrides [model] context_length).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    context_length: Option<u32>,
    /// Layers to offload to the GPU (overrides [model] gpu_layers).
    #[arg(long, value_name = "N")]
    gpu_layers: Option<u32>,
    /// Answers generated at once, each with its own context (overrides [server] parallel;
    /// default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=r1d::config::MAX_PARALLEL as i64))]
    parallel: Option<u32>,
    /// Generation threads (overrides [model] threads).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Unix socket to listen on (overrides [server] socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve on this TCP address, e.g. localhost:11434, 127.0.0.1:11434 or [::1]:11434
    /// (repeatable; a host name means each address it resolves to; overrides [server] listen).
    /// A non-loopback address needs [server] api_key_file.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Vec<String>,
    /// Plugin directory (overrides [plugins] dir).
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Run as the system service (system paths), even when not root.
    #[arg(long, conflicts_with = "user")]
    system: bool,
    /// Run in user mode (XDG paths), even as root.
    #[arg(long)]
    user: bool,
    /// D-Bus bus to serve org.r1d.R1 on: auto (the system bus in system mode, the session bus in
    /// user mode), system, session or off. Without a reachable bus r1d serves HTTP only.
    #[arg(long, value_enum, value_name = "BUS", default_value = "auto")]
    dbus: r1d::api::dbus::BusChoice,
    /// No D-Bus (the same as --dbus off).
    #[arg(long)]
    no_dbus: bool,
    /// Probe the hardware below DIR (its proc/ and sys/ trees) instead of this machine, without
    /// NVML: for tests of the planner and the hardware watcher, and to replay another machine.
    #[arg(long, value_name = "DIR", hide = true)]
    hardware_root: Option<PathBuf>,
    /// Write man pages and shell completions into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_assets: Option<PathBuf>,
    /// Without a subcommand, r1d serves.
    #[command(subcommand)]
    command: Option<Command>,
}

/// One-shot commands that need no running daemon.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print this machine's hardware profile (CPU, RAM within the cgroup, disk, GPUs, bandwidth,
    /// the config's RPC workers that answer).
    Hardware {
        /// Print the profile as JSON (the input format of `r1d plan --hardware`).
        #[arg(long)]
        json: bool,
    },
    /// Print which DeepSeek-R1 variant and quantization fits this machine, or the one a profile
    /// describes, with every candidate and why.
    Plan {
        /// Plan for the machine described by this hardware profile (JSON, as `r1d hardware
        /// --json` prints it) instead of this one.
        #[arg(long, value_name = "PROFILE.json")]
        hardware: Option<PathBuf>,
        /// Print the plan as JSON (every candidate).
        #[arg(long)]
        json: bool,
        /// Show every variant × quantization, not only the choice and, per variant, the best
        /// that fits (or the nearest to fitting).
        #[arg(long)]
        all: bool,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,r1d::plugin=warn"));
    // A log line that cannot be written (stderr a closed pipe: EPIPE, as SIGPIPE is ignored by
    // Rust programs) is dropped. tracing-subscriber would otherwise report it with `eprintln!`,
    // which panics on that same stderr — in whichever task logged, the signal task included, so
    // r1d would no longer stop on SIGTERM.
    // Each event is one line whatever user-chosen strings it carries (control characters
    // escaped: no forged lines), see `r1d::logging`.
    use r1d::logging::Output;
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let journal = r1d::systemd::stderr_is_journal();
    // Only asked when stderr is the journal: elsewhere (a terminal, tests) no socket is opened.
    let layer = journal.then(r1d::logging::journald_layer);
    let output = Output::choose(
        journal,
        matches!(layer, Some(Ok(_))),
        std::io::stderr().is_terminal(),
    );
    match (output, layer) {
        (Output::Journal, Some(Ok(layer))) => {
            tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .init();
        }
        (Output::Text { ansi }, _) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(r1d::logging::EscapingStderr { ansi })
            .log_internal_errors(false)
            .with_ansi(ansi)
            .init(),
        // journald adds its own timestamps, and reads each line's priority from a `<N>` prefix.
        (_, layer) => {
            let format = tracing_subscriber::fmt::format().without_time();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(r1d::logging::EscapingStderr { ansi: false })
                .log_internal_errors(false)
                .with_ansi(false)
                .event_format(r1d::systemd::SyslogPriority(format))
                .init();
            if let Some(Err(e)) = layer {
                tracing::debug!(
                    "journald's native socket does not answer ({e}); logging to stderr"
                );
            }
        }
    }
}

/// Reads the config: an explicit `--config` must be readable; the default file is optional. An
/// invalid file is reported and r1d runs on defaults, saying why in /health.
fn read_config(args: &Args, mode: Mode) -> (Config, Option<String>) {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (r1d::paths::config_file(mode), false),
    };
    if !explicit && !path.exists() {
        return (Config::default(), None);
    }
    match Config::load(&path) {
        Ok(c) => {
            tracing::info!("config {}", path.display());
            (c, None)
        }
        // Reported by the caller: at start as r1d's exit error, on reload in the log.
        Err(e) => (Config::default(), Some(e.to_string())),
    }
}

fn main() -> anyhow::Result<()> {
    // First, while this is the only thread: every thread made later (the runtime's, the
    // engine's, a worker's) inherits the short scheduler slice (see r1d::scheduling).
    let slices = r1d::scheduling::ask_for_short_slices();
    // `r1d __plugin-worker`: the process a model runs in (started by r1d itself; see
    // r1d::backend::worker). It needs no runtime, config or logging setup of its own.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == r1d::backend::worker::WORKER_ARG)
    {
        r1d::backend::worker_child::run();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(serve(slices))
}

async fn serve(slices: r1d::scheduling::SliceOutcome) -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_assets {
        let command = <Args as clap::CommandFactory>::command();
        return r1d::cli_assets::generate(command, dir).with_context(|| {
            format!(
                "failed to write man pages and completions to {}",
                dir.display()
            )
        });
    }
    init_logging();
    r1d::telemetry::install();
    let mode = if args.system {
        Mode::System
    } else if args.user {
        Mode::User
    } else {
        Mode::detect()
    };
    let (config, config_error) = read_config(&args, mode);
    // At start there is no running config to keep: a broken file stops r1d with the file, line
    // and key, rather than serving on defaults (another socket, another model) unnoticed.
    if let Some(error) = &config_error {
        anyhow::bail!("{error}");
    }
    if let Some(command) = &args.command {
        return one_shot(command, &config, mode, args.plugin_dir.as_deref());
    }
    let stop_signals = StopSignals::install()?;
    match slices {
        r1d::scheduling::SliceOutcome::Failed(_) => tracing::warn!("{slices}"),
        r1d::scheduling::SliceOutcome::NotHonoured(0) => tracing::debug!("{slices}"),
        _ => tracing::info!("{slices}"),
    }

    let plugin_dir = args
        .plugin_dir
        .clone()
        .or_else(|| config.plugins.dir.clone())
        .unwrap_or_else(r1d::paths::plugin_dir);
    let host = match PluginHost::discover_with(&plugin_dir, worker_command(&config)?) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            PluginHost::empty(&plugin_dir, e.to_string())
        }
    };
    if host.backends().is_empty() && config.remote.is_empty() {
        tracing::warn!("no usable backend plugin in {}", plugin_dir.display());
    }
    let rpc_workers = &config.backends.llamacpp.rpc_workers;
    let host = if rpc_workers.is_empty() {
        host
    } else {
        host.with_load_extra(
            "llamacpp",
            serde_json::json!({ "rpc_workers": rpc_workers }),
        )
    };
    // `[[remote]]` endpoints: a backend inside r1d (no plugin file), checked once before the
    // first choice so a healthy remote can be chosen at start.
    let remotes =
        r1d::backend::remote::Remotes::new(&config.remote, tokio::runtime::Handle::current());
    if !config.remote.is_empty() {
        remotes.check_all().await;
    }
    let host = Arc::new(
        host.with_internal(Arc::new(r1d::backend::remote::RemoteBackend::new(
            remotes.clone(),
        ))),
    );

    let probe = match &args.hardware_root {
        Some(root) => r1d::hardware::Probe::fake_root(
            root,
            config
                .store
                .dir
                .clone()
                .unwrap_or_else(|| r1d::paths::models_dir(mode)),
        ),
        None => this_machine(mode),
    };
    // A GPU the driver lists but that does not answer yet (boot-time race): wait a little
    // before planning, then plan without it and report `degraded` until it shows up.
    let degraded = {
        let probe = probe.clone();
        let wait = r1d::supervisor::seconds(config.watch.gpu_wait_s);
        tokio::task::spawn_blocking(move || r1d::hardware::nvidia::wait_for_gpus(&probe, wait))
            .await
            .unwrap_or(None)
    };
    // No configured model: serve the best DeepSeek-R1 the store holds (or say how to get one).
    let store = r1d::store::Store::new(&config, mode, probe.clone());
    store.set_estimator(estimator(host.clone(), r1d::paths::estimate_cache(mode)));
    store.set_remotes(remotes.clone());
    // The RPC workers, probed once now (in parallel) so the first plan knows them.
    let engine_for_rpc = Arc::new(std::sync::OnceLock::new());
    let rpc = {
        let config = config.clone();
        let engine = engine_for_rpc.clone();
        tokio::task::spawn_blocking(move || rpc_watch(&config, engine))
            .await
            .context("the rpc worker watch failed to start")?
    };
    store.set_rpc_watch(rpc.clone());
    let mut start =
        r1d::supervisor::Start::choose(&store, load_spec(&args, &config), config_error).await;
    // What the file says against the configured load (a directory that is no model, a context
    // beyond the trained one) is said at start, and nothing is loaded.
    if let Some(spec) = &start.load {
        let checked = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || r1d::control::check_spec(&spec))
                .await
                .unwrap_or(Ok(()))
        };
        if let Err(reason) = checked {
            tracing::error!("failed to load the configured model: {reason}");
            start.load = None;
            start.no_model_reason = Some(reason);
        }
    }

    let socket = args
        .socket
        .clone()
        .or_else(|| config.server.socket.clone())
        .unwrap_or_else(|| r1d::paths::socket(mode));
    // TCP is opt in; the key is read (and a non-loopback address without one refused) before
    // anything is bound.
    let api_key = config
        .server
        .api_key_file
        .as_deref()
        .map(r1d::listen::ApiKey::read)
        .transpose()?;
    let tcp_addrs = r1d::listen::resolve(if args.listen.is_empty() {
        &config.server.listen
    } else {
        &args.listen
    })?;
    r1d::listen::check(&tcp_addrs, api_key.as_ref())?;
    let kind = if mode == Mode::System {
        r1d::server::SocketKind::System
    } else if args.socket.is_none() && config.server.socket.is_none() {
        r1d::server::SocketKind::UserDefault
    } else {
        r1d::server::SocketKind::UserChosen
    };
    // As the units' LimitNOFILE= does: room for [server] max_connections and the model's files.
    r1d::server::raise_file_limit(65_536);
    let mut listening = r1d::systemd::listen(&socket, kind)
        .await
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    let tcp_listeners = r1d::listen::listeners(
        std::mem::take(&mut listening.tcp),
        &tcp_addrs,
        api_key.as_ref(),
    )?;
    let notifier = r1d::systemd::Notifier::new(start.load.as_ref());

    let engine = Engine::start(
        host.clone(),
        start.load.clone(),
        start.no_model_reason.clone(),
        EngineConfig {
            default_max_tokens: config.model.default_max_tokens,
            queue_depth: config
                .server
                .queue_depth
                .unwrap_or(config::DEFAULT_QUEUE_DEPTH),
            parallel: args.parallel.or(config.server.parallel),
            stall_timeout: config.server.stall_timeout_s.map_or(
                config::DEFAULT_STALL_TIMEOUT,
                std::time::Duration::from_secs_f64,
            ),
        },
    );
    let shutdown = CancellationToken::new();
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| r1d::paths::config_file(mode));
    let args = Arc::new(args);
    // Follows the config file and the hardware, and swaps the model when they change.
    let supervisor = r1d::supervisor::Supervisor::start(
        r1d::supervisor::Setup {
            engine: engine.clone(),
            store: store.clone(),
            config: config.clone(),
            config_path: Some(config_path),
            read_config: Box::new({
                let args = args.clone();
                move || match read_config(&args, mode) {
                    (config, None) => Ok(config),
                    (_, Some(error)) => Err(error),
                }
            }),
            configured_model: Box::new({
                let args = args.clone();
                move |config| load_spec(&args, config)
            }),
            degraded,
            probe: probe.clone(),
            start,
        },
        shutdown.clone(),
    );
    // A remote whose health changes (down, or back): plan again, which falls back to the best
    // local variant or returns to the remote.
    remotes.watch({
        let supervisor = supervisor.clone();
        let handle = tokio::runtime::Handle::current();
        move || {
            let supervisor = supervisor.clone();
            handle.spawn(async move {
                match supervisor.replan_now("a remote's health changed").await {
                    Ok(line) => tracing::info!("{line}"),
                    Err(e) => tracing::warn!("re-plan after a remote's health changed: {e}"),
                }
            });
        }
    });
    // One control plane under HTTP's native routes and D-Bus.
    let control = Control::new(
        engine.clone(),
        host,
        PlannerState {
            probe,
            policy: config.planner.clone(),
        },
        Some(store.clone()),
        Some(supervisor.clone()),
    )
    .with_rpc_watch(rpc);
    let _ = engine_for_rpc.set(engine.clone());
    // D-Bus (org.r1d.R1) beside HTTP, on the same engine; a missing bus is a warning.
    r1d::api::dbus::spawn(r1d::api::dbus::Options {
        bus: if args.no_dbus {
            r1d::api::dbus::BusChoice::Off
        } else {
            args.dbus
        },
        mode,
        control: control.clone(),
    });
    let router = r1d::api::http::router(r1d::api::http::AppState::new(control));

    // systemd: STATUS=, READY=1, watchdog, STOPPING=1; SIGHUP re-reads the config.
    let reload: r1d::systemd::Reload = Box::new(move || {
        let supervisor = supervisor.clone();
        Box::pin(async move {
            let outcome = supervisor.reload("SIGHUP").await;
            match outcome.error {
                Some(error) => format!("rejected: {error}"),
                None => outcome.model,
            }
        })
    });
    let _systemd = notifier.spawn(engine.clone(), shutdown.clone(), Some(reload));
    let limits = config.server_limits();
    let stopping_engine = engine.clone();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            stop_signals.wait().await;
            // Running answers end with an error event, so the graceful shutdown does not wait
            // for a long generation to finish. (Acted on before anything is logged.)
            engine.shutdown();
            shutdown.cancel();
            tracing::info!("shutting down");
        }
    });
    let socket_file = listening.owned_socket_file();
    // TCP serves the same routes; with a key configured, every TCP request must present it.
    let tcp_router = match api_key {
        Some(key) => r1d::api::auth::require_key(router.clone(), key),
        None => router.clone(),
    };
    let tcp = tokio::spawn(r1d::listen::serve(
        tcp_listeners,
        tcp_router,
        shutdown.clone(),
    ));
    let result = r1d::server::serve(listening.listener, router, shutdown.clone(), limits).await;
    // The Unix socket's server ended (shutdown, or an error): TCP ends too.
    shutdown.cancel();
    match tcp.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the TCP listener failed: {e}"),
        Err(e) => tracing::error!("the TCP listener failed: {e}"),
    }
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    // The engine thread may be inside the backend (a decode): `main` returns only once it has
    // left, unloaded the model and ended, because returning runs the backend's C++ static
    // destructors (llama.cpp's), which must not run under a working backend thread.
    if !stopping_engine.stop(ENGINE_STOP_TIMEOUT).await {
        tracing::error!(
            "the engine thread did not stop within {} s; exiting without running exit handlers",
            ENGINE_STOP_TIMEOUT.as_secs()
        );
        // SAFETY: `_exit` ends the process at once, running no exit handlers and no static
        // destructors — exactly what must not run while the engine thread is in the backend.
        unsafe { _exit(1) }
    }
    result.context("the HTTP server failed")
}

/// How long r1d waits at exit for the engine thread to leave the backend (it stops at the next
/// token or load progress report, and waits on no client once shutdown began). With the 10 s
/// the server gives open connections, below the units' `TimeoutStopSec=30s`.
const ENGINE_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

extern "C" {
    fn _exit(status: i32) -> !;
}

/// What to load: `--model` and the other overrides over the config's `[model]`.
fn load_spec(args: &Args, config: &Config) -> Option<LoadSpec> {
    let model_path = args.model.clone().or_else(|| config.model.path.clone());
    model_path.map(|path| {
        LoadOptions {
            path: path.to_string_lossy().into_owned(),
            context_length: args
                .context_length
                .or(config.model.context_length)
                .or_else(|| {
                    r1d::control::default_context_length(&path, config.planner.context_length)
                }),
            gpu_layers: args.gpu_layers.or(config.model.gpu_layers),
            threads: args.threads.or(config.model.threads).map(|t| {
                // A bound for --threads as for [model] threads and /r1/load: more threads than 4
                // per CPU only add contention (capped, with a warning, not refused at start).
                let max = config::max_threads();
                if t > max {
                    tracing::warn!("--threads {t} is more than {max} (4 per CPU); using {max}");
                }
                t.min(max)
            }),
            kv_cache_type: config.model.kv_cache_type.clone(),
            backend: args
                .backend
                .clone()
                .or_else(|| config.model.backend.clone()),
        }
        .spec()
    })
}

/// How plugins are opened, probed and run: in worker processes started from this executable
/// unless `[plugins] isolation = "in-process"` (then `None`).
fn worker_command(config: &Config) -> anyhow::Result<Option<r1d::backend::WorkerCommand>> {
    Ok(match config.plugins.isolation {
        config::Isolation::Process => Some(
            r1d::backend::WorkerCommand::this_executable(config.plugins.hang_timeout_s.map_or(
                config::DEFAULT_HANG_TIMEOUT,
                std::time::Duration::from_secs_f64,
            ))
            .context("failed to find r1d's own executable to start plugin workers")?,
        ),
        config::Isolation::InProcess => None,
    })
}

/// The store's [`r1d::store::Estimator`]: asks the file's backend plugin, unless `cache`
/// (`r1d::paths::estimate_cache`) already holds the estimate for this file, load and set of
/// plugins; a failure is logged and the planner falls back to its formula.
fn estimator(host: Arc<PluginHost>, cache: std::path::PathBuf) -> r1d::store::Estimator {
    use r1d::store::estimate_cache::{plugins_fingerprint, EstimateCache, Key};
    let plugins = plugins_fingerprint(
        host.records()
            .iter()
            .map(|r| (r.path.as_path(), r.name.as_deref(), r.version.as_deref())),
    );
    let cache = EstimateCache::open(cache);
    Arc::new(move |spec| {
        let key = Key::of(spec, &plugins);
        if let Some(hit) = key.as_ref().and_then(|k| cache.get(k)) {
            tracing::debug!(
                "memory estimate of {} from the cache {}",
                spec.params.path,
                cache.path().display()
            );
            return Some(hit);
        }
        match r1d::engine::estimate(&host, spec) {
            Ok(estimate) => {
                if let (Some(key), Some(e)) = (key, &estimate) {
                    cache.put(key, e.clone());
                }
                estimate
            }
            Err(e) => {
                tracing::warn!(
                    "failed to estimate the memory of {}, planning it by the catalog formula: {e}",
                    spec.params.path
                );
                None
            }
        }
    })
}

fn this_machine(mode: Mode) -> Probe {
    Probe::this_machine(
        r1d::paths::models_dir(mode),
        Some(r1d::paths::bandwidth_cache(mode)),
    )
}

/// `r1d hardware` and `r1d plan`: print and exit; a closed pipe ends quietly.
fn one_shot(
    command: &Command,
    config: &Config,
    mode: Mode,
    plugin_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use r1d::api::report;
    use std::io::Write as _;
    let probe_here = || {
        this_machine(mode)
            .run()
            .context("failed to probe this machine's hardware")
    };
    let text = match command {
        Command::Hardware { json } => {
            let mut hw = probe_here()?;
            // The RPC workers of the config, asked now: a profile `r1d plan --hardware` reads.
            hw.rpc_workers = r1d::hardware::rpc::RpcWatch::once(
                &config.backends.llamacpp.rpc_workers,
                rpc_link(config),
            )
            .hosts();
            let mut text = report::hardware(&hw, *json)?;
            if !*json {
                // What the backend plugins make of this machine (which of them would serve, and
                // the CPU variant ggml chose): probed in workers, as the service does.
                let dir = plugin_dir
                    .map(std::path::Path::to_path_buf)
                    .or_else(|| config.plugins.dir.clone())
                    .unwrap_or_else(r1d::paths::plugin_dir);
                let host = PluginHost::discover_with(&dir, worker_command(config)?);
                text.push_str(&report::plugins_text(
                    &dir,
                    host.as_ref().map(|h| h.records()),
                ));
            }
            text
        }
        Command::Plan {
            hardware,
            json,
            all,
        } => {
            // The files present and where they were searched (none for a hardware profile:
            // another machine's files are not known here).
            let (hw, present, entries, searched) = match hardware {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!("failed to read the hardware profile {}", path.display())
                    })?;
                    let hw = report::hardware_from_json(&text)
                        .with_context(|| format!("invalid hardware profile {}", path.display()))?;
                    (hw, Vec::new(), Vec::new(), path.display().to_string())
                }
                // This machine: the files in its models directory need no download, and their
                // backend's own estimate replaces the formula's memory figure.
                None => {
                    let probe = this_machine(mode);
                    let hw = probe_here()?;
                    let dir = plugin_dir
                        .map(std::path::Path::to_path_buf)
                        .or_else(|| config.plugins.dir.clone())
                        .unwrap_or_else(r1d::paths::plugin_dir);
                    let store = r1d::store::Store::new(config, mode, probe);
                    // Estimates read each file's header with backend code: in workers, as the
                    // service does, so a strange file cannot crash the command.
                    if let Ok(host) = PluginHost::discover_with(&dir, worker_command(config)?) {
                        store.set_estimator(estimator(
                            Arc::new(host),
                            r1d::paths::estimate_cache(mode),
                        ));
                    }
                    let entries = store.scan();
                    let present = store.present(&entries, &config.planner);
                    // The RPC workers of the config, asked now.
                    let mut hw = hw;
                    hw.rpc_workers = r1d::hardware::rpc::RpcWatch::once(
                        &config.backends.llamacpp.rpc_workers,
                        rpc_link(config),
                    )
                    .hosts();
                    (hw, present, entries, store.searched())
                }
            };
            let plan = r1d::planner::plan(&hw, &present, &config.planner);
            let mut wire = r1d::api::to_wire::plan_to_wire(&plan);
            // `[[remote]]` endpoints: checked now, and weighed by the daemon's own selection
            // (the best model present against the healthy remotes by `[planner] prefer`).
            if !config.remote.is_empty() {
                use r1d::backend::remote;
                let remotes =
                    remote::Remotes::new(&config.remote, tokio::runtime::Handle::current());
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(remotes.check_all())
                });
                let views = remotes.views();
                let choice = r1d::store::select::choose(&plan, &entries, &searched);
                let verdict =
                    r1d::store::select::remote_verdict(&choice, &plan, &views, &config.planner);
                r1d::api::to_wire::plan_remotes(&mut wire, &views, verdict, &config.planner);
            }
            report::plan_wire(&wire, *json, *all, report::terminal_width())?
        }
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("failed to write to stdout"),
    }
}

/// SIGTERM and SIGINT, handled from early in `main` (before the socket is bound), so a stop
/// request that comes while r1d starts is a clean stop, never a death by signal.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("failed to handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("failed to handle SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `[backends.llamacpp]`'s link settings for the planner (`hardware::rpc::RpcWatch::hosts`).
fn rpc_link(config: &Config) -> (Option<f64>, Option<u64>) {
    (
        config.backends.llamacpp.rpc_link_latency_ms,
        config.backends.llamacpp.rpc_link_bandwidth_bytes_per_s,
    )
}

/// Watches the llama.cpp RPC workers (`hardware::rpc`) — their free memory is what the planner
/// splits a model across — and loads the resident llama.cpp model again when one it may use
/// vanished while no answer runs (an answer that runs meets the broken connection itself: its
/// worker process ends and the engine's crash recovery loads again), or when a vanished one is
/// back: the plugin uses the workers that answer at load time. Started before the engine (the
/// first plan needs the workers), which `engine` receives once it runs.
fn rpc_watch(
    config: &Config,
    engine: Arc<std::sync::OnceLock<Engine>>,
) -> r1d::hardware::rpc::RpcWatch {
    use r1d::hardware::rpc::{RpcChange, RpcWatch};
    let runtime = tokio::runtime::Handle::current();
    RpcWatch::start(
        &config.backends.llamacpp.rpc_workers,
        rpc_link(config),
        std::time::Duration::from_secs(2),
        move |change| {
            let Some(engine) = engine.get() else {
                return;
            };
            let snap = engine.snapshot();
            let Some(spec) = snap.spec.clone() else {
                return;
            };
            let on_llamacpp = snap.model.as_ref().is_some_and(|(_, b)| b == "llamacpp");
            if !on_llamacpp || snap.state != r1d::engine::EngineState::Ready {
                return;
            }
            let why = match &change {
                RpcChange::Vanished(_) if engine.running_requests() > 0 => return,
                RpcChange::Vanished(w) => format!("rpc worker {w} vanished"),
                RpcChange::Returned(w) => format!("rpc worker {w} is back"),
            };
            tracing::info!(
                "{why}: loading {} again on the workers that answer",
                spec.params.path
            );
            let engine = engine.clone();
            runtime.spawn(async move {
                if let Err(e) = engine.load_again(spec).await {
                    tracing::warn!("loading again after \"{why}\" failed: {e}");
                }
            });
        },
    )
}
