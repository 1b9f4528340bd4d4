//! What `r1d hardware` and `r1d plan` print: the hardware profile and the plan as text or JSON
//! (the JSON is `/r1/hardware`'s and `/r1/plan`'s body), and a saved profile read back for
//! `r1d plan --hardware PROFILE.json`.

use r1d_client::wire;

use super::to_wire::{hardware_from_wire, hardware_to_wire, plan_to_wire};
use crate::hardware::Hardware;
use crate::planner::Plan;

/// The hardware as `r1d hardware` prints it: a few lines of text, or (`json`) the profile that
/// `r1d plan --hardware` reads.
///
/// # Errors
/// Only if the profile cannot be encoded as JSON.
pub fn hardware(hw: &Hardware, json: bool) -> Result<String, serde_json::Error> {
    let profile = hardware_to_wire(hw);
    if json {
        serde_json::to_string_pretty(&profile)
    } else {
        Ok(hardware_text(&profile))
    }
}

/// The backend plugins of `dir` as `r1d hardware` lists them after the machine: each file with
/// its backend, score and devices (a llama.cpp CPU-variants build names the CPU variant ggml chose
/// there, "CPU (zen4 variant)"), or why it is not usable; `records` is the host's discovery, or
/// why the directory could not be read. Starts with an empty line.
pub fn plugins_text(
    dir: &std::path::Path,
    records: Result<&[crate::backend::PluginRecord], &crate::backend::BackendError>,
) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "\nbackend plugins in {} (per format the highest score serves):\n",
        dir.display()
    );
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "  none: {e}");
            return out;
        }
    };
    if records.is_empty() {
        out.push_str("  none\n");
    }
    for r in records {
        let file = r.path.file_name().map_or_else(
            || r.path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let name = r.name.as_deref().unwrap_or("?");
        match (&r.error, &r.probe) {
            (None, Some(p)) => {
                let devices: Vec<&str> = p.devices.iter().map(|d| d.name.as_str()).collect();
                let _ = writeln!(
                    out,
                    "  {name:<12} {file}: score {}, {}",
                    p.score,
                    if devices.is_empty() {
                        "no devices".to_owned()
                    } else {
                        devices.join(", ")
                    }
                );
            }
            (error, _) => {
                let _ = writeln!(
                    out,
                    "  {name:<12} {file}: unavailable: {}",
                    error.as_deref().unwrap_or("not probed")
                );
            }
        }
    }
    out
}

/// The plan as `r1d plan` prints it: the table (`all`: every candidate, else the relevant ones;
/// no line wider than `width` columns), or (`json`) `/r1/plan`'s body, every candidate.
///
/// # Errors
/// Only if the plan cannot be encoded as JSON.
pub fn plan(plan: &Plan, json: bool, all: bool, width: u16) -> Result<String, serde_json::Error> {
    plan_wire(&plan_to_wire(plan), json, all, width)
}

/// A plan already in its wire form (with its remotes, [`super::to_wire::plan_remotes`]) as
/// JSON or as the table `r1d plan` prints.
///
/// # Errors
/// The JSON error (not expected: the wire types serialize).
pub fn plan_wire(
    plan: &wire::Plan,
    json: bool,
    all: bool,
    width: u16,
) -> Result<String, serde_json::Error> {
    if json {
        serde_json::to_string_pretty(&plan)
    } else {
        Ok(plan.to_table(wire::TableView { all, width }))
    }
}

/// The width of the terminal on stdout in columns, else [`wire::TableView::DEFAULT_WIDTH`]
/// (not a terminal: a pipe, a file).
pub fn terminal_width() -> u16 {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| w.ws_col)
        .filter(|&c| c > 0)
        .unwrap_or(wire::TableView::DEFAULT_WIDTH)
}

/// A hardware profile saved by `r1d hardware --json` (or written by hand), as the planner's input.
///
/// # Errors
/// The JSON error, naming the field at fault.
pub fn hardware_from_json(
    text: &str,
) -> Result<Hardware, serde_path_to_error::Error<serde_json::Error>> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let profile: wire::HardwareProfile = serde_path_to_error::deserialize(de)?;
    Ok(hardware_from_wire(&profile))
}

fn hardware_text(p: &wire::HardwareProfile) -> String {
    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    let mut s = format!(
        "{:<10}{} — {} cores, {} threads{}\n",
        "cpu",
        p.cpu.model.as_deref().unwrap_or("unknown model"),
        p.cpu.cores,
        p.cpu.threads.unwrap_or(p.cpu.cores),
        if p.cpu.features.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.cpu.features.join(" "))
        }
    );
    s += &format!(
        "{:<10}{} available of {}{}{}\n",
        "memory",
        gb(p.memory.available_bytes),
        gb(p.memory.total_bytes),
        p.memory
            .cgroup_limit_bytes
            .map(|l| format!(" (cgroup limit {})", gb(l)))
            .unwrap_or_default(),
        p.memory
            .bandwidth_bytes_per_s
            .map(|b| match p.memory.bandwidth_spread {
                Some(spread) => format!(
                    ", {:.1} GB/s read (median of {} runs, spread {:.0} %)",
                    b as f64 / 1e9,
                    crate::hardware::bandwidth::RUNS,
                    spread * 100.0
                ),
                None => format!(", {:.1} GB/s read", b as f64 / 1e9),
            })
            .unwrap_or_default()
    );
    if let Some(d) = &p.disk {
        s += &format!(
            "{:<10}{} free in {}\n",
            "disk",
            gb(d.free_bytes),
            d.path.as_deref().unwrap_or("?")
        );
    }
    if p.gpus.is_empty() {
        s += &format!("{:<10}none\n", "gpu");
    }
    for (i, g) in p.gpus.iter().enumerate() {
        s += &format!(
            "{:<10}{} {} — {} free of {}\n",
            format!("gpu {i}"),
            g.vendor,
            g.name,
            gb(g.vram_free_bytes),
            gb(g.vram_total_bytes)
        );
    }
    for d in &p.vulkan_devices {
        s += &format!(
            "{:<10}{} ({}, {}, Vulkan {}{}) — {} {} of {}{}\n",
            format!("vulkan {}", d.index),
            d.name,
            d.vendor,
            d.device_type,
            d.api_version,
            d.driver
                .as_deref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default(),
            gb(d.memory_free_bytes),
            if d.memory_budget {
                "free"
            } else {
                "free (no budget: the heap size)"
            },
            gb(d.memory_total_bytes),
            d.not_planned
                .as_deref()
                .map(|why| format!("; not planned: {why}"))
                .unwrap_or_default()
        );
    }
    for w in &p.rpc_workers {
        s += &format!(
            "{:<10}{} — {} device(s), {} free; link: {:.3} ms round trip, {:.0} MB/s\n",
            "rpc",
            w.endpoint,
            w.devices_free_bytes.len(),
            gb(w.devices_free_bytes.iter().sum()),
            w.link_latency_ms.unwrap_or_default(),
            w.link_bandwidth_bytes_per_s.unwrap_or_default() as f64 / 1e6
        );
    }
    s
}
