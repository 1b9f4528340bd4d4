//! Which present model to serve: the planner's ranking applied to the files on disk. Pure.
//!
//! The planner ranks every variant × quantization for this machine and says which fit. The best
//! one that fits *and is present* is served; when the planner's own choice is not present, the
//! choice says so, so `auto_pull` can fetch it and `r1ctl status` can say what a pull would
//! bring. Non-R1 models are never chosen here (they are served when asked for by name).

use crate::planner::{Candidate, Plan};

use super::ModelEntry;

/// The outcome of a selection.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index into the entries of the file to serve.
    pub entry: Option<usize>,
    /// Index into the plan's candidates of that file's candidate.
    pub candidate: Option<usize>,
    /// The planner's choice when it is not present (what a pull would fetch).
    pub missing: Option<usize>,
    /// One line: what is served and why, or why nothing is and the command that fixes it.
    pub reason: String,
    /// A `[[remote]]` to serve instead of the local choice ([`weigh_remotes`]): its load.
    pub remote: Option<crate::engine::LoadSpec>,
}

/// The variant to suggest pulling when nothing is present: the plan's choice, else the smallest.
pub fn suggested_pull(plan: &Plan) -> String {
    plan.chosen()
        .map(|c| c.variant.id.to_owned())
        .unwrap_or_else(|| crate::catalog::VARIANTS[0].id.to_owned())
}

/// Chooses among `entries` by `plan`'s ranking (the planner's own order: fast enough, variant,
/// all on the GPU, quantization; "fast enough" is the planner's [`Candidate::fast_enough`]),
/// `dirs` names where was searched (for the reason).
pub fn choose(plan: &Plan, entries: &[ModelEntry], dirs: &str) -> Choice {
    // The planner's own verdict (with its hysteresis while a model is served); the minimum is
    // kept for the reasons below.
    let fast = |c: &Candidate| c.fast_enough;
    let key = |c: &Candidate| {
        (
            fast(c),
            c.variant.quality,
            c.all_on_gpu(),
            c.quantization.quality,
        )
    };
    // Candidates with a usable file, and that file.
    let present: Vec<(usize, usize)> = plan
        .candidates
        .iter()
        .enumerate()
        .filter_map(|(ci, c)| {
            entries
                .iter()
                .position(|e| e.is_usable() && e.is_variant(c.variant.id, c.quantization.name))
                .map(|ei| (ci, ei))
        })
        .collect();
    let best = present
        .iter()
        .filter(|(ci, _)| plan.candidates[*ci].fits)
        .max_by_key(|(ci, _)| key(&plan.candidates[*ci]))
        .copied();
    let missing = plan
        .chosen
        .filter(|&ci| !present.iter().any(|(p, _)| *p == ci));
    let pull_hint = |ci: usize| {
        let c = &plan.candidates[ci];
        format!(
            "`r1ctl pull {}-{}` would bring the planner's choice, {} {}",
            c.variant.id,
            c.quantization.name.to_ascii_lowercase(),
            c.variant.id,
            c.quantization.name
        )
    };
    match best {
        Some((ci, ei)) => {
            let c = &plan.candidates[ci];
            let mut reason = format!(
                "{} {} ({}): the best DeepSeek-R1 present that fits — {}",
                c.variant.id,
                c.quantization.name,
                entries[ei].path.display(),
                c.reason.trim_start_matches("chosen — ")
            );
            if let Some(m) = missing {
                reason += &format!("; {}", pull_hint(m));
            }
            Choice {
                entry: Some(ei),
                candidate: Some(ci),
                missing,
                reason,
                remote: None,
            }
        }
        None => {
            let why = if present.is_empty() {
                format!("no usable DeepSeek-R1 model is present (searched {dirs})")
            } else {
                let (ci, _) = present[0];
                format!(
                    "no DeepSeek-R1 model present fits this machine ({} {}: {})",
                    plan.candidates[ci].variant.id,
                    plan.candidates[ci].quantization.name,
                    plan.candidates[ci].reason
                )
            };
            let fix = match plan.chosen() {
                Some(c) => format!(
                    "run `r1ctl pull {}` to download {} {} ({:.1} GB), the variant that fits here",
                    c.variant.id,
                    c.variant.id,
                    c.quantization.name,
                    c.quantization.file_bytes as f64 / 1e9
                ),
                None => format!(
                    "run `r1ctl pull {}` to download the smallest variant ({})",
                    suggested_pull(plan),
                    plan.reason
                ),
            };
            Choice {
                entry: None,
                candidate: None,
                missing,
                reason: format!(
                    "{why}; {fix}, or give r1d a model file with --model PATH or [model] path"
                ),
                remote: None,
            }
        }
    }
}

/// The one decision between the local choice and the `[[remote]]` endpoints, shared by the
/// daemon ([`weigh_remotes`]), `/r1/plan` and `r1d plan`: the best local model *present*
/// (`choice`, from [`choose`]) against the remotes' last health checks by `[planner] prefer`
/// ([`crate::backend::remote::choose`]). Returns the index of the remote to serve, if any, and
/// why (one line). Pure.
pub fn remote_verdict(
    choice: &Choice,
    plan: &Plan,
    remotes: &[crate::backend::remote::RemoteView],
    policy: &crate::config::PlannerConfig,
) -> (Option<usize>, String) {
    use crate::backend::remote;
    let candidates: Vec<remote::RemoteCandidate> =
        remotes.iter().map(remote::RemoteCandidate::from).collect();
    let local = choice.candidate.map(|ci| {
        let c = &plan.candidates[ci];
        remote::LocalChoice {
            quality: c.variant.quality,
            variant: c.variant.id,
            fast_enough: c.fast_enough,
        }
    });
    remote::choose(local, &candidates, policy.prefer, policy.min_tokens_per_s)
}

/// Weighs the `[[remote]]` endpoints against the local choice ([`remote_verdict`]): a remote
/// that wins becomes [`Choice::remote`] and the reason says why; otherwise the reason gains
/// what was decided about the remotes (kept as a fallback, or skipped and why). Pure.
pub fn weigh_remotes(
    choice: &mut Choice,
    plan: &Plan,
    remotes: &[crate::backend::remote::RemoteView],
    policy: &crate::config::PlannerConfig,
) {
    use crate::backend::remote;
    if remotes.is_empty() {
        return;
    }
    let (pick, why) = remote_verdict(choice, plan, remotes, policy);
    match pick {
        Some(i) => {
            choice.remote = Some(crate::engine::LoadSpec {
                params: crate::engine::LoadParams {
                    path: remotes[i].config.path(),
                    ..Default::default()
                },
                backend: Some(remote::BACKEND.to_owned()),
            });
            choice.reason = why;
        }
        None => choice.reason = format!("{}; {why}", choice.reason),
    }
}
