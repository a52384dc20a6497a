//! `mqadmin upgradeCheck | upgrade | upgradeFinish`. These run offline against config files
//! and store directories (no broker connection), so they sit beside the gRPC commands:
//! `mqadmin` hands them here through [`dispatch`].
//!
//! Exit status: 0 = accepted / done; 1 = refused or failed (the reason on stdout with the
//! plan, or on stderr).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use super::apply;
use super::plan::{self, Level, Plan, Request};

pub const COMMANDS: [&str; 3] = ["upgradeCheck", "upgrade", "upgradeFinish"];

#[derive(Parser, Debug)]
#[command(name = "mqadmin", about = "wasmq upgrade from a non-replicated cluster to a Raft group")]
struct UpgradeCli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct PlanArgs {
    /// Config of an old (non-replicated) node; repeat for each node. Its broker must be stopped.
    #[arg(long = "old", required = true)]
    old: Vec<PathBuf>,
    /// Config of a member of the new Raft group; repeat for each member prepared here.
    #[arg(long = "new", required = true)]
    new: Vec<PathBuf>,
    /// Directory with upgrade-validator plugins (`NAME.wasm` + `NAME.toml`).
    #[arg(long = "plugin-dir")]
    plugin_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read the old commitlogs (read-only), find divergence, run validators, print the plan.
    #[command(name = "upgradeCheck")]
    UpgradeCheck {
        #[command(flatten)]
        args: PlanArgs,
        /// Node (`brokerName/brokerId` or config path) to take the log from.
        #[arg(long = "source")]
        source: Option<String>,
    },
    /// Check, then copy the source's commitlog into every new node's store and back up the
    /// old stores (`<dir>.pre-upgrade-<ts>`). Changes nothing when refused.
    #[command(name = "upgrade")]
    Upgrade {
        #[command(flatten)]
        args: PlanArgs,
        #[arg(long = "source")]
        source: Option<String>,
    },
    /// Remove the backups once a majority of the new group committed past the old end.
    #[command(name = "upgradeFinish")]
    UpgradeFinish {
        #[arg(long = "new", required = true)]
        new: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs an upgrade command when `args[1]` names one; `None` otherwise.
pub fn dispatch(args: impl IntoIterator<Item = OsString>, out: &mut dyn Write) -> Option<ExitCode> {
    let args: Vec<OsString> = args.into_iter().collect();
    let name = args.get(1)?.to_str()?;
    if !COMMANDS.contains(&name) {
        return None;
    }
    let cli = match UpgradeCli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Some(if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
    };
    Some(match run(cli.command, out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mqadmin: error: {e:#}");
            ExitCode::FAILURE
        }
    })
}

fn request(args: &PlanArgs, source: Option<String>) -> Request {
    Request { old: args.old.clone(), new: args.new.clone(), plugin_dir: args.plugin_dir.clone(), source }
}

/// Ok(true) = accepted/done, Ok(false) = refused (already printed).
fn run(command: Command, out: &mut dyn Write) -> anyhow::Result<bool> {
    match command {
        Command::UpgradeCheck { args, source } => {
            let plan = plan::check(&request(&args, source))?;
            print_plan(&plan, args.json, None, out)?;
            Ok(plan.accepted())
        }
        Command::Upgrade { args, source } => {
            let plan = plan::check(&request(&args, source))?;
            if !plan.accepted() {
                print_plan(&plan, args.json, None, out)?;
                return Ok(false);
            }
            let outcome = apply::perform(&plan)?;
            print_plan(&plan, args.json, Some(&outcome), out)?;
            Ok(true)
        }
        Command::UpgradeFinish { new, json } => match apply::finish(&new) {
            Ok(done) => {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&done)?)?;
                } else {
                    writeln!(
                        out,
                        "{} of {} members committed past the old end ({})",
                        done.past_old_end.len(),
                        done.members,
                        done.past_old_end.join(", ")
                    )?;
                    for r in &done.removed {
                        writeln!(out, "removed backup {}", r.display())?;
                    }
                    writeln!(out, "upgrade finished")?;
                }
                Ok(true)
            }
            Err(super::UpgradeError::NotYet(why)) => {
                writeln!(out, "not finished: {why}")?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        },
    }
}

#[derive(serde::Serialize)]
struct OldNodeJson<'a> {
    id: &'a str,
    config: &'a std::path::Path,
    log_dir: &'a std::path::Path,
    #[serde(flatten)]
    extent: &'a super::log_scan::LogExtent,
    ranges: usize,
}

#[derive(serde::Serialize)]
struct PlanJson<'a> {
    accepted: bool,
    source: &'a str,
    source_was_chosen: bool,
    old: Vec<OldNodeJson<'a>>,
    new: Vec<(&'a str, PathBuf)>,
    divergences: &'a [plan::NodeDivergence],
    findings: &'a [plan::Finding],
    validators: &'a [String],
    outcome: Option<&'a apply::Outcome>,
}

fn print_plan(plan: &Plan, json: bool, outcome: Option<&apply::Outcome>, out: &mut dyn Write) -> anyhow::Result<()> {
    let src = plan.source_node();
    if json {
        let j = PlanJson {
            accepted: plan.accepted(),
            source: &src.id,
            source_was_chosen: plan.source_was_chosen,
            old: plan
                .old
                .iter()
                .map(|o| OldNodeJson {
                    id: &o.id,
                    config: &o.config_path,
                    log_dir: &o.log_dir,
                    extent: &o.extent,
                    ranges: o.ranges.len(),
                })
                .collect(),
            new: plan.new.iter().map(|n| (n.id.as_str(), n.config.store_root())).collect(),
            divergences: &plan.divergences,
            findings: &plan.findings,
            validators: &plan.validators_run,
            outcome,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
        return Ok(());
    }
    let group = &plan.new[0].config.d_leger_group;
    writeln!(out, "upgrade plan: {} old node(s) -> Raft group `{group}`", plan.old.len())?;
    writeln!(out, "old nodes (commitlogs read, not changed):")?;
    for o in &plan.old {
        let e = &o.extent;
        writeln!(
            out,
            "  {:<16} entries {}..{} ({})  last term {}  offsets [{}, {})  last entry crc {:08x}  {} checksum ranges  {}",
            o.id,
            e.first_index,
            e.last_index,
            e.entries,
            e.last_term,
            e.min_pos,
            e.max_pos,
            e.last_entry_crc,
            o.ranges.len(),
            o.config_path.display()
        )?;
    }
    for d in &plan.divergences {
        writeln!(
            out,
            "divergence: {} differs from {} at entry {} (commitlog offset {}); {} entries of {} from there on",
            d.node, d.source, d.at.index, d.at.pos, d.node_entries_dropped, d.node
        )?;
    }
    let why = if plan.source_was_chosen { "chosen with --source" } else { "most complete" };
    writeln!(out, "source: {} ({why}), {} entries", src.id, src.extent.entries)?;
    writeln!(out, "new nodes:")?;
    for n in &plan.new {
        writeln!(
            out,
            "  {:<8} {} <- copy of {}  ({})",
            n.id,
            n.config.store_root().display(),
            src.id,
            n.config_path.display()
        )?;
    }
    if !plan.validators_run.is_empty() {
        writeln!(out, "validators: {}", plan.validators_run.join(", "))?;
    }
    if !plan.findings.is_empty() {
        writeln!(out, "findings:")?;
        for f in &plan.findings {
            let level = match f.level {
                Level::Info => "INFO   ",
                Level::Warning => "WARNING",
                Level::Error => "ERROR  ",
            };
            writeln!(out, "  {level} {} ({}): {}", f.code, f.by, f.text)?;
        }
    }
    match outcome {
        None if plan.accepted() => {
            writeln!(out, "verdict: ACCEPTED (run `mqadmin upgrade` with the same arguments to carry it out)")?
        }
        None => writeln!(out, "verdict: REFUSED (nothing was changed)")?,
        Some(o) => {
            writeln!(out, "verdict: DONE: {} entries copied to {} new store(s)", o.entries_copied, o.new_stores.len())?;
            for b in &o.backups {
                writeln!(out, "  backup kept: {}", b.display())?;
            }
            writeln!(
                out,
                "next: start the new group, then `mqadmin upgradeFinish --new ...` removes the backups once it committed past entry {}",
                src.extent.last_index
            )?;
        }
    }
    Ok(())
}
