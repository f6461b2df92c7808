//! `tinyllm cache ls` and `tinyllm cache gc`: list the artifact cache, remove what is not needed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::cli::args::FolderArgs;
use crate::fsutil::human_bytes;
use crate::pipeline::{self, Cache, runner};

/// Inspect or clean the artifact cache.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the cached artifacts.
    Ls {
        #[command(flatten)]
        folders: FolderArgs,
    },
    /// Remove what interrupted runs left behind; optionally artifacts no run folder uses.
    Gc {
        #[command(flatten)]
        folders: FolderArgs,
        /// Also remove artifacts that no run folder under --runs links to.
        #[arg(long)]
        unreferenced: bool,
        /// Also remove the resumable partial work of unfinished stages.
        #[arg(long)]
        scratch: bool,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn exec(command: CacheCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        CacheCommand::Ls { folders } => cache_ls(&folders.cache_dir(None), out),
        CacheCommand::Gc {
            folders,
            unreferenced,
            scratch,
            dry_run,
        } => cache_gc(
            &folders.cache_dir(None),
            &folders.runs_dir(None),
            unreferenced,
            scratch,
            dry_run,
            out,
        ),
    }
}

fn cache_ls(root: &Path, out: &mut dyn Write) -> Result<()> {
    let cache = Cache::new(root);
    let artifacts = cache.list();
    if artifacts.is_empty() {
        writeln!(out, "no artifacts in {}", root.display())?;
        return Ok(());
    }
    let now = pipeline::cache::now_unix();
    let mut total = 0;
    for artifact in &artifacts {
        total += artifact.bytes;
        let age = runner::human_secs(now.saturating_sub(artifact.created_unix) as f64);
        writeln!(
            out,
            "{:<12} {}  {:>9}  {:>12} ago  {}",
            artifact.stage,
            &artifact.key[..16.min(artifact.key.len())],
            human_bytes(artifact.bytes),
            age,
            artifact.summary
        )?;
    }
    writeln!(
        out,
        "{} artifacts, {} in {}",
        artifacts.len(),
        human_bytes(total),
        root.display()
    )?;
    Ok(())
}

fn cache_gc(
    root: &Path,
    runs: &Path,
    unreferenced: bool,
    scratch: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let cache = Cache::new(root);
    let keep = if unreferenced {
        Some(referenced_artifacts(runs)?)
    } else {
        None
    };
    let report = cache.gc(keep.as_ref(), scratch, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for path in &report.removed {
        writeln!(out, "{verb} {}", path.display())?;
    }
    writeln!(
        out,
        "{verb} {} folders, {}",
        report.removed.len(),
        human_bytes(report.bytes)
    )?;
    Ok(())
}

/// Every cache folder that a run folder's `artifacts/` links point at.
fn referenced_artifacts(runs: &Path) -> Result<HashSet<PathBuf>> {
    let mut keep = HashSet::new();
    if !runs.exists() {
        return Ok(keep);
    }
    let files = crate::fsutil::list_files(runs)
        .with_context(|| format!("cannot read the run folders in {}", runs.display()))?;
    for relative in files {
        let path = runs.join(&relative);
        let in_artifacts = relative
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "artifacts");
        if in_artifacts && let Ok(target) = path.canonicalize() {
            keep.insert(target);
        }
    }
    Ok(keep)
}
