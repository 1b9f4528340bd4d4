//! `r1ctl`, the command-line client of r1d: `status`, `ask`, `chat`, `run`, `ps`, `show`, `stop`,
//! `rm`, and the store and control commands. Ollama users find its habits here: `run MODEL [PROMPT]`, `ps`,
//! `show`, `stop`, and `/bye`, `/help`, `/clear`, `/set`, `/show` inside a chat.
//!
//! Exit codes: 0 success; 1 the operation failed (including "r1d is not running"); 2 usage error
//! (clap). Human output on a terminal; `--json` prints one JSON object per line. A closed pipe
//! (`r1ctl ask … | head`) ends quietly.

mod assets;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use r1d_client::wire::{
    BackendList, ChatCompletionRequest, ChatMessage, State, Status, Timings, Usage,
};
use r1d_client::{Client, ClientError};

/// Talk to r1d, the DeepSeek-R1 service of this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// r1d's socket (default: $XDG_RUNTIME_DIR/r1d/r1d.sock for users, /run/r1d/r1d.sock for root).
    #[arg(long, global = true, env = "R1D_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON (one object per line for streams).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, clap::Args)]
struct GenerationArgs {
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, value_name = "TOKENS")]
    max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<i64>,
    /// Print prompt and generation speed (tokens/s) and time to first token on stderr.
    #[arg(long)]
    stats: bool,
    /// Do not print the model's reasoning (R1 still reasons; only its answer is shown).
    #[arg(long)]
    hide_reasoning: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's state and the resident model.
    Status,
    /// Ask one question and stream the answer. Without a question (or with "-"), it is read
    /// from stdin: `echo "why?" | r1ctl ask`.
    Ask {
        /// The question.
        prompt: Option<String>,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Chat interactively: history is kept; Ctrl-C stops the current answer, Ctrl-D leaves.
    Chat {
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Show which DeepSeek-R1 variant and quantization r1d picks for this machine, and why: the
    /// choice and, per variant, the best that fits (or the nearest to fitting).
    Plan {
        /// Show every variant × quantization.
        #[arg(long)]
        all: bool,
    },
    /// List the model files r1d knows (its own, the Hugging Face cache's, Ollama's), with
    /// variant, quantization, size, location and status.
    Models,
    /// Download a model into r1d's models directory: `deepseek-r1:7b` (the best quantization for
    /// this machine), `deepseek-r1:7b-q8_0`, or `hf.co/OWNER/REPO:FILE`. The daemon downloads
    /// (Ctrl-C stops watching, not the download; run the same pull again to follow it), resumes
    /// an interrupted download, and verifies the sha256 before the file is put in place.
    Pull {
        /// What to pull.
        model: String,
    },
    /// Serve another model now: a variant (`deepseek-r1:14b`, pinned), any listed model by name,
    /// or `auto` for the planner's choice among the models present.
    Use {
        /// Variant, model name, or `auto`.
        model: String,
    },
    /// Serve MODEL and talk to it, as `ollama run` does: pulls it when it is not present (with
    /// progress), makes it resident, then answers PROMPT or opens a chat.
    Run {
        /// Variant (`deepseek-r1:7b`), listed model name, `hf.co/OWNER/REPO:FILE`, or a file's path.
        model: String,
        /// The question; without one, an interactive chat opens.
        prompt: Option<String>,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Show the resident model: name, quantization, memory, and the requests running.
    Ps,
    /// Show a model's details: variant, quantization, parameters, context, capabilities and its
    /// chat template (`--json` for everything r1d knows).
    Show {
        /// The model's name, as `r1ctl models` or `r1ctl ps` list it.
        model: String,
    },
    /// Remove models from r1d's models directory, as `ollama rm` does (names as `r1ctl models`
    /// lists them, or a file's path). The model r1d serves is refused: `r1ctl use` another one
    /// (or `r1ctl stop`) first, or give `--force`. Files in the Hugging Face cache or Ollama's
    /// store are never touched; r1ctl says which tool removes them.
    Rm {
        /// Unload the model first when r1d serves it (as `r1ctl stop` does), then remove it.
        #[arg(long)]
        force: bool,
        /// The models to remove.
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Unload the resident model (memory is freed; `r1ctl use auto` or a request to load brings
    /// one back).
    Stop,
    /// Make r1d re-read its config now (as `systemctl reload r1d` does) and say what changed;
    /// a file with an error is rejected and the running config stays in force.
    Reload,
    /// Follow what r1d does: state changes, config reloads, hardware changes, plan changes and
    /// model swaps, one line each, until Ctrl-C.
    Events,
}

fn main() -> ExitCode {
    // Packaging (hidden): man pages and shell completions.
    if let Some(dir) = assets::requested() {
        return match assets::generate(<Cli as clap::CommandFactory>::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "r1ctl: failed to write man pages and completions to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("r1ctl: failed to start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("r1ctl: {e:#}");
            if let Some(hint) = connect_hint(&e) {
                eprintln!("{hint}");
            }
            ExitCode::from(1)
        }
    }
}

/// What to do about a failed connection: not in group `r1d` (permission denied on the system
/// socket), or no r1d running (no socket) — how to start it in both modes.
fn connect_hint(e: &anyhow::Error) -> Option<String> {
    let Some(ClientError::Connect { socket, error }) = e.downcast_ref::<ClientError>() else {
        return None;
    };
    let system = socket == std::path::Path::new(r1d_client::SYSTEM_SOCKET);
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if system => Some(format!(
            "hint: you are not in group r1d, which may use {}: `sudo usermod -aG r1d $USER`, \
             then log in again",
            socket.display()
        )),
        std::io::ErrorKind::PermissionDenied => Some(format!(
            "hint: {} belongs to another user; start your own r1d, or pass --socket",
            socket.display()
        )),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Some(
            "hint: start r1d — as a system service: `sudo systemctl enable --now r1d.socket`; \
             for your user: `systemctl --user enable --now r1d.socket`, or run `r1d` in a \
             terminal"
                .to_owned(),
        ),
        _ => None,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(r1d_client::default_socket_path);
    let client = Client::new(socket);
    match cli.command {
        Command::Status => status(&client, cli.json).await,
        Command::Ask { prompt, generation } => {
            let prompt = question(prompt)?;
            ask_once(&client, &generation, prompt, cli.json).await
        }
        Command::Run {
            model,
            prompt,
            generation,
        } => {
            run_model(&client, &model, cli.json).await?;
            match prompt {
                Some(prompt) => ask_once(&client, &generation, prompt, cli.json).await,
                None if !std::io::stdin().is_terminal() => {
                    let prompt = question(None)?;
                    ask_once(&client, &generation, prompt, cli.json).await
                }
                None => chat(&client, &generation, cli.json).await,
            }
        }
        Command::Ps => ps(&client, cli.json).await,
        Command::Show { model } => show(&client, &model, cli.json).await,
        Command::Stop => {
            let status: Status = client
                .post_json("/r1/unload", &serde_json::json!({}))
                .await?;
            if cli.json {
                writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    serde_json::to_string(&status)?
                )?;
            } else {
                writeln!(
                    std::io::stdout().lock(),
                    "unloaded; r1d serves no model now"
                )?;
            }
            Ok(())
        }
        Command::Rm { force, models } => {
            for model in &models {
                let request = r1d_client::wire::ModelRequest {
                    model: model.clone(),
                };
                let removed: r1d_client::wire::Removed =
                    match client.post_json("/r1/remove", &request).await {
                        // In use: with --force, unload it (no answer runs on it after that) and
                        // remove it then.
                        Err(r1d_client::ClientError::Status { status, .. })
                            if force && status.as_u16() == 409 =>
                        {
                            let _: Status = client
                                .post_json("/r1/unload", &serde_json::json!({}))
                                .await?;
                            eprintln!("unloaded '{model}' to remove it");
                            client.post_json("/r1/remove", &request).await?
                        }
                        other => other?,
                    };
                let mut out = std::io::stdout().lock();
                if cli.json {
                    writeln!(out, "{}", serde_json::to_string(&removed)?)?;
                } else {
                    writeln!(
                        out,
                        "deleted '{}' ({}, {} freed)",
                        removed.model,
                        removed.path,
                        human_bytes(removed.freed_bytes)
                    )?;
                }
            }
            Ok(())
        }
        Command::Chat { generation } => chat(&client, &generation, cli.json).await,
        Command::Plan { all } => plan(&client, cli.json, all).await,
        Command::Models => models(&client, cli.json).await,
        Command::Pull { model } => pull(&client, &model, cli.json).await,
        Command::Reload => reload(&client, cli.json).await,
        Command::Events => events(&client, cli.json).await,
        Command::Use { model } => {
            let status = use_model(&client, &model, cli.json).await?;
            if cli.json {
                writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    serde_json::to_string(&status)?
                )?;
                Ok(())
            } else {
                print_status(&status)
            }
        }
    }
}

async fn models(client: &Client, json: bool) -> anyhow::Result<()> {
    let list: r1d_client::wire::StoreModelList = client.get_json("/r1/models", false).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&list)?)?;
        return Ok(());
    }
    if list.models.is_empty() {
        writeln!(
            out,
            "no models found (searched {}); `r1ctl pull deepseek-r1:1.5b` fetches the smallest",
            list.searched
        )?;
        return Ok(());
    }
    // r1d's own files by their place below the models directory (pulls sit in
    // hf.co/OWNER/REPO/, older ones flat); other tools' stores by their full path.
    let dir = std::path::Path::new(&list.dir);
    let place = |path: &str| {
        std::path::Path::new(path)
            .strip_prefix(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.to_owned())
    };
    writeln!(
        out,
        "models directory: {} (pulls go to hf.co/OWNER/REPO/ below it)",
        list.dir
    )?;
    let width = list
        .models
        .iter()
        .map(|m| m.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    writeln!(
        out,
        "{:<width$} {:<20} {:<8} {:>10} {:<12} {:<11} PATH",
        "NAME", "VARIANT", "QUANT", "SIZE", "SOURCE", "STATUS"
    )?;
    for m in &list.models {
        writeln!(
            out,
            "{:<width$} {:<20} {:<8} {:>10} {:<12} {:<11} {}{}",
            m.name,
            m.variant.as_deref().unwrap_or("-"),
            m.quantization.as_deref().unwrap_or("-"),
            human_bytes(m.size_bytes),
            m.source,
            if m.resident {
                "resident"
            } else {
                m.status.as_str()
            },
            place(&m.path),
            m.detail
                .as_deref()
                .map(|d| format!("\n{:<w$}{d}", "", w = width + 1))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

async fn pull(client: &Client, model: &str, json: bool) -> anyhow::Result<()> {
    let mut events = client.pull(model).await?;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(model.to_owned());
        bar
    });
    let mut last = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                eprintln!("r1d goes on pulling {model}; run `r1ctl pull {model}` again to follow it");
                return Ok(());
            }
        };
        let Some(event) = event else { break };
        let event = event?;
        if json {
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string(&event)?
            )?;
        }
        if let Some(bar) = &bar {
            if let Some(total) = event.total {
                bar.set_length(total);
            }
            if let Some(done) = event.completed {
                bar.set_position(done);
            }
            if event.kind == "verifying" {
                bar.set_message(format!("{model}: verifying sha256"));
            }
        }
        last = Some(event);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match last {
        Some(e) if e.kind == "done" => {
            if !json {
                let what = if e.already_present {
                    "already present"
                } else {
                    "pulled"
                };
                writeln!(
                    std::io::stdout().lock(),
                    "{} {what}: {}{}",
                    e.model,
                    e.path.as_deref().unwrap_or("?"),
                    e.sha256
                        .as_deref()
                        .map(|s| format!(" (sha256 {s} verified)"))
                        .unwrap_or_default()
                )?;
            }
            Ok(())
        }
        Some(e) if e.kind == "error" => {
            anyhow::bail!("{}", e.error.unwrap_or_else(|| "the pull failed".into()))
        }
        _ => anyhow::bail!("the pull of {model} ended without a result (did r1d stop?)"),
    }
}

async fn reload(client: &Client, json: bool) -> anyhow::Result<()> {
    let outcome = client.reload().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&outcome)?)?;
    } else {
        let file = outcome.config_path.as_deref().unwrap_or("(no config file)");
        if let Some(error) = &outcome.error {
            anyhow::bail!("{file} was rejected, the running config stays in force: {error}");
        }
        if outcome.changes.is_empty() {
            writeln!(out, "{file}: nothing changed")?;
        }
        for line in &outcome.changes {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "model: {}", outcome.model)?;
    }
    Ok(())
}

async fn events(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut stream = client.events().await?;
    while let Some(event) = stream.next().await {
        let event = event?;
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&event)?)?;
        } else {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(event.time);
            let stamp = humantime::format_rfc3339_seconds(time).to_string();
            let clock = stamp.get(11..19).unwrap_or(&stamp).to_owned();
            writeln!(out, "{clock} {:<9}{}", event.kind, event.message)?;
        }
        out.flush()?;
    }
    anyhow::bail!("r1d closed the event stream (did it stop?)")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Loading => "loading",
        State::Ready => "ready",
        State::NoModel => "no model loaded",
        State::Swapping => "swapping models",
        State::Degraded => "degraded",
    }
}

async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status: Status = client.status().await?;
    // The backend plugins and why any is unavailable; a daemon without the route lists none.
    let backends = client
        .get_json::<BackendList>("/r1/backends", false)
        .await
        .ok();
    if json {
        let mut value = serde_json::to_value(&status)?;
        if let (Some(object), Some(list)) = (value.as_object_mut(), &backends) {
            object.insert("backends".into(), serde_json::to_value(&list.backends)?);
        }
        writeln!(std::io::stdout().lock(), "{value}")?;
        return Ok(());
    }
    print_status(&status)?;
    if let Some(list) = backends {
        print_backends(&list)?;
    }
    Ok(())
}

/// One line per backend plugin: name, available or not, formats, and the devices or the reason.
fn print_backends(list: &BackendList) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for (i, b) in list.backends.iter().enumerate() {
        let label = if i == 0 { "backends" } else { "" };
        // A plugin that could not be read has no name: its file name stands in (the error
        // names the whole path).
        let name = b.name.clone().unwrap_or_else(|| {
            std::path::Path::new(&b.path)
                .file_name()
                .map_or_else(|| b.path.clone(), |f| f.to_string_lossy().into_owned())
        });
        let state = if b.available {
            "available"
        } else {
            "unavailable"
        };
        let detail = match (&b.error, b.devices.is_empty()) {
            (Some(why), _) => why.clone(),
            (None, false) => b.devices.join(", "),
            (None, true) => String::new(),
        };
        writeln!(
            out,
            "{label:<14}{name:<12} {state:<13}{:<6}{detail}",
            b.formats.join(",")
        )?;
    }
    Ok(())
}

fn print_status(status: &Status) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<14}{}", "state", state_name(status.state))?;
    if let Some(m) = &status.model {
        writeln!(out, "{:<14}{}", "model", m.name)?;
        writeln!(out, "{:<14}{}", "file", m.path)?;
        match &m.backend_file {
            // The file: several plugin files may be the same backend (llama.cpp's CPU,
            // CPU-variants and GPU builds).
            Some(file) => {
                let name = std::path::Path::new(file)
                    .file_name()
                    .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
                writeln!(out, "{:<14}{} ({name})", "backend", m.backend)?
            }
            None => writeln!(out, "{:<14}{}", "backend", m.backend)?,
        }
        if let Some(v) = &m.variant {
            writeln!(out, "{:<14}{}", "variant", v)?;
        }
        if let Some(q) = &m.quantization {
            writeln!(out, "{:<14}{}", "quantization", q)?;
        }
        if let Some(r) = &m.remote {
            // Served by a `[[remote]]`: what r1d knows of it, never zeros that read as sizes.
            writeln!(
                out,
                "{:<14}{} — {} at {}{}",
                "remote",
                r.name,
                r.model,
                r.url,
                match (&r.healthy, &r.health_error) {
                    (true, _) => " (healthy)".to_owned(),
                    (false, Some(e)) => format!(" (UNHEALTHY: {e})"),
                    (false, None) => " (unhealthy)".to_owned(),
                }
            )?;
            let unknown = "unknown (the remote does not publish it)";
            match m.parameters {
                0 => writeln!(out, "{:<14}{unknown}", "parameters")?,
                n => writeln!(out, "{:<14}{:.2} B", "parameters", n as f64 / 1e9)?,
            }
            match m.context_length {
                0 => writeln!(out, "{:<14}{unknown}", "context")?,
                n => writeln!(out, "{:<14}{n} tokens", "context")?,
            }
            writeln!(
                out,
                "{:<14}remote: weights and KV cache are on the remote server, not here",
                "memory"
            )?;
        } else {
            writeln!(
                out,
                "{:<14}{:.2} B",
                "parameters",
                m.parameters as f64 / 1e9
            )?;
            writeln!(out, "{:<14}{} tokens", "context", m.context_length)?;
            writeln!(out, "{:<14}{}/{}", "GPU layers", m.gpu_layers, m.layers)?;
            writeln!(
                out,
                "{:<14}{} weights, {} KV cache",
                "memory",
                human_bytes(m.weights_bytes),
                human_bytes(m.kv_cache_bytes)
            )?;
        }
        if let Some(planned) = m.planned_ram_bytes {
            let from = match m.planned_memory_source.as_deref() {
                Some("backend") => "the backend's estimate of the file",
                _ => "the catalog formula",
            };
            writeln!(
                out,
                "{:<14}{} RAM (from {from})",
                "planned",
                human_bytes(planned)
            )?;
        }
        if let Some(rss) = m.resident_bytes {
            writeln!(
                out,
                "{:<14}{} held by r1d ({} anonymous, {} file-backed)",
                "actual",
                human_bytes(rss),
                human_bytes(m.resident_anon_bytes.unwrap_or(0)),
                human_bytes(m.resident_file_bytes.unwrap_or(0))
            )?;
        }
    }
    if let Some(loading) = &status.loading {
        let pct = status.progress.unwrap_or(0.0) * 100.0;
        writeln!(out, "{:<14}{loading} ({pct:.0} %)", "loading")?;
    }
    if let Some(error) = &status.error {
        writeln!(out, "{:<14}{error}", "why")?;
    }
    if let Some(selection) = status.selection.as_ref().filter(|s| {
        status
            .error
            .as_ref()
            .is_none_or(|e| !e.contains(s.as_str()))
    }) {
        writeln!(out, "{:<14}{selection}", "chosen")?;
    }
    if let Some(more) = &status.more_memory {
        writeln!(out, "{:<14}{more}", "more memory")?;
    }
    if let Some(w) = &status.watch {
        if let Some(e) = &w.config_error {
            writeln!(
                out,
                "{:<14}rejected, the running config stays in force: {e}",
                "config"
            )?;
        }
        if let Some(d) = &w.degraded {
            writeln!(out, "{:<14}{d}", "degraded")?;
        }
        if let Some(p) = &w.pinned {
            writeln!(
                out,
                "{:<14}{p} (`r1ctl use auto` returns to the planner's choice)",
                "pinned"
            )?;
        }
        if let Some(b) = &w.better {
            writeln!(out, "{:<14}{b}", "better fit")?;
        }
        if let Some(p) = &w.pending {
            writeln!(out, "{:<14}{p}", "pending")?;
        }
        if let Some(e) = &w.last_load_error {
            writeln!(out, "{:<14}{e}", "last swap")?;
        }
        if let Some(c) = &w.last_crash {
            writeln!(out, "{:<14}{c}", "last crash")?;
        }
        writeln!(out, "{:<14}{}", "swap policy", w.swap_policy)?;
    }
    for w in &status.rpc_workers {
        let detail = match (&w.error, w.free_bytes, w.layers) {
            (Some(e), _, _) => format!(": {e}"),
            (None, Some(free), _) => format!(", {:.1} GB free", free as f64 / 1e9),
            (None, None, Some(layers)) => format!(", {layers} layers of the model"),
            (None, None, None) => String::new(),
        };
        writeln!(
            out,
            "{:<14}{} {}{detail}",
            "rpc worker", w.endpoint, w.state
        )?;
    }
    writeln!(out, "{:<14}{:.0} s", "uptime", status.uptime_s)?;
    writeln!(
        out,
        "{:<14}{} finished ({} failed), {} running, {} queued (up to {} at once)",
        "requests",
        status.requests_served,
        status.requests_failed,
        status.running_requests,
        status.queued_requests,
        status.parallel
    )?;
    Ok(())
}

fn request(generation: &GenerationArgs, messages: Vec<ChatMessage>) -> ChatCompletionRequest {
    ChatCompletionRequest {
        messages,
        max_tokens: generation.max_tokens,
        temperature: generation.temperature,
        seed: generation.seed,
        ..Default::default()
    }
}

fn stats_line(usage: &Usage, t: &Timings) -> String {
    let mut line = format!(
        "prompt: {} tokens, {:.1} tokens/s · generation: {} tokens, {:.1} tokens/s",
        usage.prompt_tokens, t.prompt_per_second, usage.completion_tokens, t.predicted_per_second
    );
    if let Some(ttft) = t.time_to_first_token_ms {
        line.push_str(&format!(" · time to first token: {ttft:.0} ms"));
    }
    line
}

/// Streams one answer to stdout; returns the answer's content (for the chat history).
/// Stops early, without error, when `cancel` fires.
async fn stream_answer(
    client: &Client,
    generation: &GenerationArgs,
    messages: Vec<ChatMessage>,
    json: bool,
    cancel: impl std::future::Future,
) -> anyhow::Result<String> {
    tokio::pin!(cancel);
    // Ctrl-C also stops a request still waiting for its turn in r1d's queue.
    let request = request(generation, messages);
    let mut stream = tokio::select! {
        stream = client.chat_stream(&request) => stream?,
        _ = &mut cancel => {
            if !json {
                eprintln!("[stopped]");
            }
            return Ok(String::new());
        }
    };
    let styled = !json && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut content = String::new();
    let mut in_reasoning = false;
    loop {
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            _ = &mut cancel => {
                if !json {
                    writeln!(out, "\n[stopped]")?;
                }
                return Ok(content);
            }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        for choice in &chunk.choices {
            if let Some(r) = choice
                .delta
                .reasoning_content
                .as_deref()
                .filter(|s| !s.is_empty())
            {
                if generation.hide_reasoning {
                    // Shown nowhere, not even in --json: the user asked for the answer only.
                } else if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"type": "reasoning", "text": r})
                    )?;
                } else if styled {
                    write!(out, "{}", console::style(r).dim())?;
                } else {
                    if !in_reasoning {
                        writeln!(out, "<think>")?;
                    }
                    write!(out, "{r}")?;
                }
                in_reasoning = !generation.hide_reasoning;
            }
            if let Some(c) = choice.delta.content.as_deref().filter(|s| !s.is_empty()) {
                if in_reasoning && !json {
                    write!(out, "{}", if styled { "\n\n" } else { "\n</think>\n\n" })?;
                }
                in_reasoning = false;
                content.push_str(c);
                if json {
                    writeln!(out, "{}", serde_json::json!({"type": "content", "text": c}))?;
                } else {
                    write!(out, "{c}")?;
                }
            }
            out.flush()?;
        }
        if let (Some(usage), Some(finish)) = (
            &chunk.usage,
            chunk.choices.first().and_then(|c| c.finish_reason.clone()),
        ) {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "done", "finish_reason": finish, "usage": usage, "timings": chunk.timings})
                )?;
            } else {
                writeln!(out)?;
                if finish == "length" && content.is_empty() {
                    // R1 reasons before it answers: a cut there leaves no answer at all.
                    eprintln!(
                        "[the answer was cut off inside its reasoning, before any answer: it \
                         reached max tokens or the context length; raise --max-tokens, or the \
                         context ([model] context_length, r1d --context-length)]"
                    );
                } else if finish == "length" {
                    eprintln!(
                        "[the answer was cut off: it reached max tokens or the context length]"
                    );
                }
            }
            if generation.stats {
                if let Some(t) = &chunk.timings {
                    eprintln!("{}", stats_line(usage, t));
                }
            }
        }
    }
    Ok(content)
}

async fn ask(
    client: &Client,
    generation: &GenerationArgs,
    messages: Vec<ChatMessage>,
    json: bool,
) -> anyhow::Result<String> {
    stream_answer(
        client,
        generation,
        messages,
        json,
        std::future::pending::<()>(),
    )
    .await
}

async fn chat(client: &Client, generation: &GenerationArgs, json: bool) -> anyhow::Result<()> {
    let mut generation = generation.clone();
    // Fail early and clearly when the daemon is not there.
    let status = client.status().await?;
    if let Some(m) = &status.model {
        eprintln!(
            "chatting with {} on {} — Ctrl-C stops an answer, Ctrl-D or /bye leaves, /help for more",
            m.name, m.backend
        );
    } else {
        eprintln!(
            "r1d serves no model: {}",
            status.error.as_deref().unwrap_or("unknown reason")
        );
    }
    let mut editor = rustyline::DefaultEditor::new().context("failed to set up the line editor")?;
    // Installed once for the whole chat, so no Ctrl-C falls between two answers and kills r1ctl.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("failed to listen for Ctrl-C")?;
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(system) = &generation.system {
        history.push(ChatMessage::new("system", system.clone()));
    }
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e).context("failed to read input"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        match chat_input(&line) {
            ChatInput::Question(_) => {}
            ChatInput::Bye => return Ok(()),
            ChatInput::Help => {
                eprintln!("{CHAT_HELP}");
                continue;
            }
            ChatInput::Clear => {
                history.retain(|m| m.role == "system");
                eprintln!("[the conversation is forgotten]");
                continue;
            }
            ChatInput::Show => {
                match client.status().await {
                    Ok(status) => print_status(&status)?,
                    Err(e) => eprintln!("r1ctl: {e:#}"),
                }
                continue;
            }
            ChatInput::Think(on) => {
                generation.hide_reasoning = !on;
                eprintln!(
                    "[reasoning {}]",
                    if on {
                        "shown"
                    } else {
                        "hidden (the model still reasons)"
                    }
                );
                continue;
            }
            ChatInput::Unknown(message) => {
                eprintln!("{message}");
                continue;
            }
        }
        history.push(ChatMessage::new("user", line));
        loop {
            match stream_answer(client, &generation, history.clone(), json, sigint.recv()).await {
                // Stopped before any answer: forget the question too.
                Ok(answer) if answer.is_empty() => {
                    history.pop();
                }
                Ok(answer) => history.push(ChatMessage::new("assistant", answer)),
                Err(e) => {
                    match e.downcast_ref::<ClientError>() {
                        Some(ClientError::Connect { .. }) => return Err(e),
                        // The conversation outgrew the context: drop the oldest exchange and retry.
                        Some(ClientError::Status { body, .. })
                            if body.contains("context_length_exceeded")
                                && drop_oldest_exchange(&mut history) =>
                        {
                            eprintln!("[dropped the oldest exchange to fit the model's context]");
                            continue;
                        }
                        _ => {}
                    }
                    eprintln!("r1ctl: {e:#}");
                    history.pop();
                }
            }
            break;
        }
    }
}

/// Removes the oldest user turn and the answers after it, keeping system prompts and the last
/// user turn; false when nothing is left to drop.
fn drop_oldest_exchange(history: &mut Vec<ChatMessage>) -> bool {
    let users: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "user")
        .map(|(i, _)| i)
        .collect();
    if users.len() < 2 {
        return false;
    }
    let (first, next) = (users[0], users[1]);
    history.drain(first..next);
    true
}

async fn plan(client: &Client, json: bool, all: bool) -> anyhow::Result<()> {
    let plan: r1d_client::wire::Plan = client.get_json("/r1/plan", false).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&plan)?)?;
    } else {
        // The terminal's width, else a common terminal's (a pipe, a file).
        let width = console::Term::stdout()
            .size_checked()
            .map(|(_, cols)| cols)
            .unwrap_or(r1d_client::wire::TableView::DEFAULT_WIDTH);
        write!(
            out,
            "{}",
            plan.to_table(r1d_client::wire::TableView { all, width })
        )?;
    }
    Ok(())
}

/// The question of `ask`/`run`: the argument, or stdin when it is `-`, absent and piped.
///
/// # Errors
/// No question and stdin is a terminal (nothing to read), or stdin cannot be read.
fn question(prompt: Option<String>) -> anyhow::Result<String> {
    let question = read_question(prompt)?;
    if question.trim().is_empty() {
        anyhow::bail!(
            "the question is empty: give one (`r1ctl ask \"why is the sky blue?\"`) or pipe it in"
        );
    }
    Ok(question)
}

fn read_question(prompt: Option<String>) -> anyhow::Result<String> {
    match prompt {
        Some(p) if p != "-" => Ok(p),
        Some(_) => std::io::read_to_string(std::io::stdin())
            .context("failed to read the question from stdin"),
        None if std::io::stdin().is_terminal() => anyhow::bail!(
            "no question: give one (`r1ctl ask \"why is the sky blue?\"`) or pipe it in \
             (`echo \"why?\" | r1ctl ask`); `r1ctl chat` opens a conversation"
        ),
        None => std::io::read_to_string(std::io::stdin())
            .context("failed to read the question from stdin"),
    }
}

/// Asks one question (with the system prompt, if any) and streams the answer.
async fn ask_once(
    client: &Client,
    generation: &GenerationArgs,
    prompt: String,
    json: bool,
) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    if let Some(system) = &generation.system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    messages.push(ChatMessage::new("user", prompt));
    ask(client, generation, messages, json).await.map(|_| ())
}

/// `POST /r1/use` for `model`, with the load's progress on stderr while it waits (a terminal
/// only). Answers with the status after the load.
async fn use_model(client: &Client, model: &str, json: bool) -> anyhow::Result<Status> {
    let request = r1d_client::wire::ModelRequest {
        model: model.to_owned(),
    };
    let asked = client.post_json::<_, Status>("/r1/use", &request);
    tokio::pin!(asked);
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos:>3} %")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(format!("loading {model}"));
        bar
    });
    let watcher = Client::new(client.socket().to_owned());
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            outcome = &mut asked => break outcome,
            _ = tick.tick(), if bar.is_some() => {
                if let (Some(bar), Ok(status)) = (&bar, watcher.status().await) {
                    if let Some(p) = status.progress.filter(|_| status.loading.is_some()) {
                        bar.set_position((p * 100.0).round() as u64);
                    }
                }
            }
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(outcome?)
}

/// Whether `model` names something r1d could pull (a catalog variant or a Hugging Face file).
fn pullable(model: &str) -> bool {
    model.starts_with("deepseek-r1") || model.starts_with("hf.co/")
}

/// `r1ctl run`: makes `model` resident, pulling it first when r1d does not have it.
async fn run_model(client: &Client, model: &str, json: bool) -> anyhow::Result<()> {
    let status = match use_model(client, model, json).await {
        Ok(status) => status,
        Err(e) => {
            let absent = matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Status { status, .. }) if status.as_u16() == 404
            );
            if !(absent && pullable(model)) {
                return Err(e);
            }
            if !json {
                eprintln!("{model} is not here yet: pulling it");
            }
            pull(client, model, json).await?;
            use_model(client, model, json).await?
        }
    };
    if !json {
        if let Some(m) = &status.model {
            eprintln!(
                "serving {} ({}) on {}",
                m.name,
                m.quantization.as_deref().unwrap_or("?"),
                m.backend
            );
        }
    }
    Ok(())
}

/// `r1ctl ps`: the resident model, its memory, and the requests running (Ollama's `ps`).
async fn ps(client: &Client, json: bool) -> anyhow::Result<()> {
    let status: Status = client.status().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "state": status.state,
            "model": status.model,
            "active_requests": status.active_requests,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let Some(m) = &status.model else {
        writeln!(
            out,
            "no model is resident ({})",
            status.error.as_deref().unwrap_or(state_name(status.state))
        )?;
        return Ok(());
    };
    writeln!(
        out,
        "{:<40} {:<8} {:>10} {:>10} {:<12} REQUESTS",
        "NAME", "QUANT", "MEMORY", "GPU", "BACKEND"
    )?;
    writeln!(
        out,
        "{:<40} {:<8} {:>10} {:>10} {:<12} {} running",
        m.name,
        m.quantization.as_deref().unwrap_or("-"),
        human_bytes(m.weights_bytes + m.kv_cache_bytes),
        format!("{}/{}", m.gpu_layers, m.layers),
        m.backend,
        status.active_requests
    )?;
    Ok(())
}

/// `r1ctl show MODEL`: `/api/show` in words.
async fn show(client: &Client, model: &str, json: bool) -> anyhow::Result<()> {
    let request = r1d_client::ollama::ShowRequest {
        model: model.to_owned(),
        name: String::new(),
    };
    let shown: r1d_client::ollama::Show = client.post_json("/api/show", &request).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&shown)?)?;
        return Ok(());
    }
    let d = &shown.details;
    let info = |key: &str| {
        shown
            .model_info
            .iter()
            .find(|(k, _)| k.ends_with(key))
            .map(|(_, v)| v.to_string())
    };
    writeln!(out, "{:<14}{model}", "model")?;
    writeln!(out, "{:<14}{}", "architecture", d.family)?;
    writeln!(out, "{:<14}{}", "parameters", d.parameter_size)?;
    writeln!(out, "{:<14}{}", "quantization", d.quantization_level)?;
    writeln!(out, "{:<14}{}", "format", d.format)?;
    if let Some(ctx) = info(".context_length") {
        writeln!(out, "{:<14}{ctx} tokens", "context")?;
    }
    writeln!(
        out,
        "{:<14}{}",
        "capabilities",
        shown.capabilities.join(", ")
    )?;
    if !shown.parameters.is_empty() {
        writeln!(out, "parameters")?;
        for line in shown.parameters.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    if !shown.template.is_empty() {
        writeln!(out, "template")?;
        for line in shown.template.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

/// What a line typed in `r1ctl chat` is: a question for the model, or one of r1ctl's own
/// commands (never sent to the model).
#[derive(Debug, PartialEq, Eq)]
enum ChatInput<'a> {
    /// Send it to the model.
    Question(&'a str),
    /// `/bye`: leave.
    Bye,
    /// `/help` or `/?`.
    Help,
    /// `/clear`: forget the conversation (the system prompt stays).
    Clear,
    /// `/show`: the resident model.
    Show,
    /// `/set think on|off`: show or hide the reasoning.
    Think(bool),
    /// A `/` command r1ctl does not know, or a bad argument: the message to print.
    Unknown(String),
}

/// Reads one chat line (Ollama's commands: `/bye`, `/?`, `/help`, `/clear`, `/show`, `/set`).
fn chat_input(line: &str) -> ChatInput<'_> {
    if !line.starts_with('/') {
        return ChatInput::Question(line);
    }
    let trimmed = line.trim_end();
    let words: Vec<&str> = trimmed.split_whitespace().collect();
    match words.as_slice() {
        ["/bye"] | ["/exit"] => ChatInput::Bye,
        ["/?"] | ["/help"] => ChatInput::Help,
        ["/clear"] => ChatInput::Clear,
        ["/show"] | ["/show", "info"] => ChatInput::Show,
        ["/set", "think", "on"] | ["/set", "think"] => ChatInput::Think(true),
        ["/set", "think", "off"] | ["/set", "nothink"] => ChatInput::Think(false),
        ["/set", ..] => ChatInput::Unknown(format!(
            "unknown setting {trimmed:?}: `/set think on` or `/set think off`"
        )),
        _ => ChatInput::Unknown(format!(
            "unknown command {:?}; /help lists them (to send a line that starts with /, \
             put a space before it)",
            words.first().copied().unwrap_or(trimmed)
        )),
    }
}

const CHAT_HELP: &str = "\
/bye               leave (as does Ctrl-D)
/clear             forget the conversation so far (the system prompt stays)
/show              the resident model
/set think on|off  show or hide the model's reasoning (R1 reasons either way; off hides it)
/help              this list
Ctrl-C stops the current answer.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_lines_are_questions_unless_they_are_commands() {
        assert_eq!(chat_input("hello"), ChatInput::Question("hello"));
        // A leading space sends a line that starts with "/" to the model.
        assert_eq!(chat_input(" /bye"), ChatInput::Question(" /bye"));
        assert_eq!(chat_input("/bye"), ChatInput::Bye);
        assert_eq!(chat_input("/?"), ChatInput::Help);
        assert_eq!(chat_input("/help"), ChatInput::Help);
        assert_eq!(chat_input("/clear"), ChatInput::Clear);
        assert_eq!(chat_input("/show"), ChatInput::Show);
        assert_eq!(chat_input("/set think off"), ChatInput::Think(false));
        assert_eq!(chat_input("/set think on"), ChatInput::Think(true));
        assert!(
            matches!(chat_input("/set temperature 1"), ChatInput::Unknown(m) if m.contains("/set think on"))
        );
        assert!(matches!(chat_input("/load x"), ChatInput::Unknown(m) if m.contains("\"/load\"")));
    }
}
