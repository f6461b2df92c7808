//! Runs the variants of a spec: plans every stage's key up front, reuses what the cache holds,
//! builds the rest under a per-key lock, links the results into the run folder, and ends a sweep
//! with a comparison table.
//!
//! In a data-parallel job (`mpirun -np 4 tinyllm run …`) rank 0 runs the pipeline as one process
//! would, and the other ranks follow it ([`follow`]): they join the stages that run on every
//! rank (training) and otherwise wait for rank 0's artifacts.

mod follow;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::cache::{Artifact, Cache, CacheError, Lookup, Manifest, Verify, cache_key, now_unix};
use super::dag::StageId;
use super::overlay::{LoadedSpec, Variant};
use super::report;
pub use super::report::{SweepTable, sweep_table};
use super::spec::local_mirror_path;
use super::stage::{StageContext, StageFailure, StageRegistry};
use crate::collective::{self, Collective, Single};
use crate::fsutil;

/// How a run treats the cache.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cache_dir: PathBuf,
    pub runs_dir: PathBuf,
    /// Stop after this stage.
    pub until: Option<StageId>,
    /// Rebuild these stages; the stages made from one are rebuilt too only when its files
    /// came out different (keys come from settings, so theirs do not change).
    pub force: BTreeSet<StageId>,
    /// Re-hash every cached file instead of checking sizes.
    pub verify: bool,
    /// Plan and print, change nothing.
    pub dry_run: bool,
    pub quiet: bool,
    /// Which variants and stages this run builds (a Slurm job builds one part of a sweep).
    pub part: Part,
}

impl RunOptions {
    /// Options of a command that only reads the cache (`status`, `report`): every stage of
    /// every variant, nothing forced, nothing built.
    pub fn reading(cache_dir: PathBuf, runs_dir: PathBuf, verify: bool) -> RunOptions {
        RunOptions {
            cache_dir,
            runs_dir,
            until: None,
            force: BTreeSet::new(),
            verify,
            dry_run: true,
            quiet: true,
            part: Part::All,
        }
    }
}

/// The part of a spec's work one run does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Part {
    /// Every stage of every variant, and the sweep's table.
    #[default]
    All,
    /// One variant, by name (`--variant`); with `expect_key`, only if its last stage still has
    /// that key (`--expect-key`: a Slurm job checks that the spec it reads is the one it was
    /// submitted for).
    Variant {
        name: String,
        expect_key: Option<String>,
    },
    /// The stages whose artifact several variants share (`--shared-only`): the first job of a
    /// sweep on Slurm, which the variants' jobs wait for.
    Shared,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot write the run folder {}: {source}", path.display())]
    RunFolder { path: PathBuf, source: io::Error },
    #[error(
        "stage `{stage}` is not implemented in this build of tinyllm yet; stop before it with --until {previous}"
    )]
    NotImplemented { stage: StageId, previous: String },
    #[error("stage {stage} failed")]
    Stage {
        stage: StageId,
        #[source]
        source: StageFailure,
    },
    #[error("cannot print: {0}")]
    Output(#[from] io::Error),
    #[error(
        "variant `{variant}` now keys its {stage} artifact {found}, not {expected} as when it was submitted: the spec, an overlay or a local input changed since; submit the sweep again"
    )]
    KeyChanged {
        variant: String,
        stage: StageId,
        expected: String,
        found: String,
    },
    #[error("the spec has no variant named `{name}`; its variants are {known}")]
    UnknownVariant { name: String, known: String },
    #[error(
        "the {what} folder {} is inside the local mirror {mirror} ({key}), so the corpus would take it in; point the mirror at a folder that holds only the corpus, or move the {what} folder ({flag})",
        folder.display()
    )]
    FolderInMirror {
        what: &'static str,
        folder: PathBuf,
        mirror: String,
        key: String,
        flag: &'static str,
    },
}

/// What the plan says about one stage of one variant.
#[derive(Debug, Clone)]
pub enum PlanState {
    Cached(Box<Artifact>),
    Missing,
    Damaged(String),
    Forced,
    /// Cached, but made from an input that is rebuilt first (the reason is for the user): its
    /// key does not change, as keys come from settings, so it has to be rebuilt as well.
    Stale(String),
}

#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub stage: StageId,
    pub key: String,
    /// The stage's view as keyed (and recorded in the manifest).
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub state: PlanState,
}

#[derive(Debug, Clone)]
pub struct VariantPlan {
    pub variant: Variant,
    pub run_dir: PathBuf,
    pub stages: Vec<PlannedStage>,
    /// The keys of the stages after `--until`, which this run does not touch.
    pub later_keys: BTreeMap<StageId, String>,
}

/// How a stage ended in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    /// Built by another process while this one waited for the key's lock.
    BuiltElsewhere,
    Ran {
        secs: f64,
    },
    WouldRun,
}

#[derive(Debug, Clone)]
pub struct StageResult {
    pub stage: StageId,
    pub key: String,
    pub outcome: Outcome,
    pub metrics: BTreeMap<String, f64>,
    pub summary: String,
}

#[derive(Debug, Clone)]
pub struct VariantResult {
    pub name: String,
    pub overrides: Vec<(String, serde_json::Value)>,
    pub run_dir: PathBuf,
    pub stages: Vec<StageResult>,
}

/// The stages a run covers: all of them, or up to `until`.
fn stages_until(until: Option<StageId>) -> Vec<StageId> {
    StageId::ALL
        .into_iter()
        .filter(|s| until.is_none_or(|u| *s <= u))
        .collect()
}

/// Computes every stage's key and looks each one up, touching nothing.
pub fn plan(loaded: &LoadedSpec, opts: &RunOptions) -> Vec<VariantPlan> {
    let cache = Cache::new(&opts.cache_dir);
    let verify = if opts.verify {
        Verify::Hashes
    } else {
        Verify::Sizes
    };
    let mut checked: BTreeMap<(StageId, String), PlanState> = BTreeMap::new();
    // Variants of a sweep share most views; a view's key config can hash local corpus files,
    // so each distinct view is keyed once.
    let mut configs: BTreeMap<StageId, Vec<(&super::view::StageView, serde_json::Value)>> =
        BTreeMap::new();
    let until = stages_until(opts.until);
    loaded
        .variants
        .iter()
        .map(|variant| {
            let mut keys: BTreeMap<StageId, String> = BTreeMap::new();
            let mut stages: Vec<PlannedStage> = Vec::new();
            let mut later_keys = BTreeMap::new();
            for stage in StageId::ALL {
                let inputs: BTreeMap<String, String> = stage
                    .inputs()
                    .iter()
                    .map(|s| (s.name().to_string(), keys[s].clone()))
                    .collect();
                let view = variant.views.get(stage);
                let seen = configs.entry(stage).or_default();
                let config = match seen.iter().find(|(v, _)| *v == view) {
                    Some((_, config)) => config.clone(),
                    None => {
                        let config = view.key_config();
                        seen.push((view, config.clone()));
                        config
                    }
                };
                let key = cache_key(stage, &config, &inputs);
                keys.insert(stage, key.clone());
                if !until.contains(&stage) {
                    later_keys.insert(stage, key);
                    continue;
                }
                let mut state = checked
                    .entry((stage, key.clone()))
                    .or_insert_with(|| {
                        if opts.force.contains(&stage) {
                            return PlanState::Forced;
                        }
                        match cache.lookup(stage, &key, verify) {
                            Lookup::Hit(artifact) => PlanState::Cached(artifact),
                            Lookup::Missing => PlanState::Missing,
                            Lookup::Damaged(reason) => PlanState::Damaged(reason),
                        }
                    })
                    .clone();
                if let PlanState::Cached(_) = state
                    && let Some(reason) = stage_rebuilt_first(&stages, stage)
                {
                    state = PlanState::Stale(reason);
                }
                stages.push(PlannedStage {
                    stage,
                    key,
                    config,
                    inputs,
                    state,
                });
            }
            VariantPlan {
                run_dir: opts
                    .runs_dir
                    .join(&variant.spec.pipeline.name)
                    .join(&variant.name),
                variant: variant.clone(),
                stages,
                later_keys,
            }
        })
        .collect()
}

/// The plans of the variants and stages `part` covers.
pub fn select(plans: Vec<VariantPlan>, part: &Part) -> Result<Vec<VariantPlan>, RunError> {
    match part {
        Part::All => Ok(plans),
        Part::Variant { name, expect_key } => {
            let known: Vec<&str> = plans.iter().map(|p| p.variant.name.as_str()).collect();
            let known = known.join(", ");
            let plan = plans
                .into_iter()
                .find(|p| p.variant.name == *name)
                .ok_or_else(|| RunError::UnknownVariant {
                    name: name.clone(),
                    known,
                })?;
            if let (Some(expected), Some(last)) = (expect_key, plan.stages.last())
                && (expected.len() < 16 || !last.key.starts_with(expected.as_str()))
            {
                return Err(RunError::KeyChanged {
                    variant: name.clone(),
                    stage: last.stage,
                    expected: expected.clone(),
                    found: Cache::key_dir_name(&last.key).to_string(),
                });
            }
            Ok(vec![plan])
        }
        Part::Shared => {
            let shared = shared_stage_counts(&plans);
            Ok(plans
                .into_iter()
                .filter_map(|mut plan| {
                    let own = plan.stages.split_off(shared[&plan.variant.name]);
                    plan.later_keys
                        .extend(own.into_iter().map(|s| (s.stage, s.key)));
                    (!plan.stages.is_empty()).then_some(plan)
                })
                .collect())
        }
    }
}

/// For each variant (by name), how many of its first stages have an artifact that another
/// variant uses too. Those are always its first ones: a key covers the keys of its inputs, so a
/// stage two variants share has shared inputs.
pub fn shared_stage_counts(plans: &[VariantPlan]) -> BTreeMap<String, usize> {
    let mut users: HashMap<(StageId, &str), usize> = HashMap::new();
    for plan in plans {
        for stage in &plan.stages {
            *users.entry((stage.stage, stage.key.as_str())).or_default() += 1;
        }
    }
    plans
        .iter()
        .map(|plan| {
            let count = plan
                .stages
                .iter()
                .take_while(|s| users[&(s.stage, s.key.as_str())] > 1)
                .count();
            (plan.variant.name.clone(), count)
        })
        .collect()
}

/// Why a cached stage must be rebuilt with its inputs: one of them is damaged, or stale itself.
fn stage_rebuilt_first(planned: &[PlannedStage], stage: StageId) -> Option<String> {
    planned
        .iter()
        .filter(|p| stage.inputs().contains(&p.stage))
        .find_map(|input| match &input.state {
            PlanState::Damaged(_) => Some(format!(
                "it was made from the {} artifact, which is damaged",
                input.stage
            )),
            PlanState::Stale(_) => Some(format!(
                "it was made from the {} artifact, which is rebuilt",
                input.stage
            )),
            _ => None,
        })
}

/// Runs (or, with `dry_run`, describes) every variant of a spec, printing a line per stage.
pub fn run(
    loaded: &LoadedSpec,
    registry: &StageRegistry,
    opts: &RunOptions,
    out: &mut dyn Write,
) -> Result<Vec<VariantResult>, RunError> {
    check_folders(loaded, opts)?;
    // A dry run touches nothing, so each rank may make its own (only rank 0 prints it).
    let world: &dyn Collective = if opts.dry_run {
        &Single
    } else {
        collective::world()
    };
    if !world.leads() {
        return follow::follow(loaded, registry, opts, world).map(|()| Vec::new());
    }
    let cache = Cache::new(&opts.cache_dir);
    let mut plans = select(plan(loaded, opts), &opts.part)?;
    if opts.verify {
        check_contents(&mut plans, registry);
    }
    check_implemented(&plans, registry, opts)?;
    // A run that only reads the cache works on a read-only one.
    let builds = plans
        .iter()
        .flat_map(|p| &p.stages)
        .any(|s| !matches!(s.state, PlanState::Cached(_)));
    if !opts.dry_run && builds {
        cache.ensure()?;
    }
    let mut built: HashSet<(StageId, String)> = HashSet::new();
    // Artifacts this run replaced with different content: whatever was made from them is stale.
    let mut changed: HashSet<(StageId, String)> = HashSet::new();
    let mut results = Vec::new();
    for plan in plans {
        writeln!(
            out,
            "{} / {}",
            plan.variant.spec.pipeline.name, plan.variant.name
        )?;
        if !opts.dry_run {
            fs::create_dir_all(plan.run_dir.join("artifacts")).map_err(|source| {
                RunError::RunFolder {
                    path: plan.run_dir.clone(),
                    source,
                }
            })?;
            write_run_spec(&plan)?;
        }
        let mut artifacts: BTreeMap<StageId, Artifact> = BTreeMap::new();
        let mut stage_results = Vec::new();
        for planned in &plan.stages {
            let result = if opts.dry_run {
                dry_run_result(planned)
            } else {
                let id = (planned.stage, planned.key.clone());
                let already_built = built.contains(&id);
                let changed_input = planned.stage.inputs().iter().copied().find(|input| {
                    planned
                        .inputs
                        .get(input.name())
                        .is_some_and(|key| changed.contains(&(*input, key.clone())))
                });
                let (artifact, outcome) = match (&planned.state, changed_input) {
                    _ if already_built => (lookup_fresh(&cache, planned, opts)?, Outcome::Cached),
                    (PlanState::Cached(artifact), None) => {
                        (artifact.as_ref().clone(), Outcome::Cached)
                    }
                    (state, changed_input) => {
                        let reason = match (state, changed_input) {
                            (_, Some(input)) => Some(format!(
                                "it was made from the {input} artifact, which was rebuilt"
                            )),
                            (PlanState::Damaged(reason), _) => {
                                Some(format!("the cached artifact is damaged ({reason})"))
                            }
                            (PlanState::Stale(reason), _) => Some(reason.clone()),
                            _ => None,
                        };
                        if let Some(reason) = &reason {
                            writeln!(out, "  {:<12} rebuilding: {reason}", planned.stage.name())?;
                        }
                        let previous = match state {
                            PlanState::Forced => {
                                match cache.lookup(planned.stage, &planned.key, Verify::Sizes) {
                                    Lookup::Hit(artifact) => Some(artifact.manifest.files),
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                        let replace = reason.is_some() || matches!(state, PlanState::Forced);
                        let (artifact, outcome) = build(
                            &cache, registry, planned, replace, &plan, &artifacts, opts, out, world,
                        )?;
                        let differs =
                            previous.is_some_and(|files| files != artifact.manifest.files);
                        if matches!(outcome, Outcome::Ran { .. }) && (reason.is_some() || differs) {
                            changed.insert(id.clone());
                        }
                        (artifact, outcome)
                    }
                };
                built.insert(id);
                if runs_on_every_rank(registry, planned.stage)
                    && !matches!(outcome, Outcome::Ran { .. })
                {
                    world.agree_u64(follow::SKIP);
                }
                link_artifact(&plan.run_dir, planned.stage, &artifact)?;
                // The other ranks read this artifact once it is in the cache.
                world.barrier();
                let result = StageResult {
                    stage: planned.stage,
                    key: planned.key.clone(),
                    outcome,
                    metrics: artifact.manifest.metrics.clone(),
                    summary: artifact.manifest.summary.clone(),
                };
                artifacts.insert(planned.stage, artifact);
                result
            };
            print_stage_line(out, &result)?;
            stage_results.push(result);
        }
        let result = VariantResult {
            name: plan.variant.name.clone(),
            overrides: plan.variant.overrides.clone(),
            run_dir: plan.run_dir.clone(),
            stages: stage_results,
        };
        if !opts.dry_run {
            unlink_stale_artifacts(&plan)?;
            write_stage_record(&plan.run_dir, &result.stages)?;
            report::write_variant_report(&result).map_err(run_folder_err(&plan.run_dir))?;
        }
        results.push(result);
    }
    if loaded.variants.len() > 1 && opts.part == Part::All {
        write_sweep(loaded, &results, opts, out)?;
    }
    Ok(results)
}

/// Prints a sweep's comparison table and (unless this is a dry run) writes it as `sweep.csv`,
/// with `report.md` and the plots of every variant's loss, into `runs/<pipeline>/`.
pub fn write_sweep(
    loaded: &LoadedSpec,
    results: &[VariantResult],
    opts: &RunOptions,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let table = sweep_table(&loaded.swept_keys, results);
    writeln!(out)?;
    write!(out, "{}", table.render())?;
    if opts.dry_run {
        return Ok(());
    }
    let pipeline_dir = opts.runs_dir.join(&loaded.variants[0].spec.pipeline.name);
    let csv_path = pipeline_dir.join("sweep.csv");
    fsutil::write_atomic(&csv_path, table.to_csv().as_bytes())
        .map_err(run_folder_err(&csv_path))?;
    report::write_sweep_report(&pipeline_dir, &table, results).map_err(|e| {
        RunError::RunFolder {
            path: pipeline_dir.clone(),
            source: io::Error::other(e),
        }
    })?;
    writeln!(
        out,
        "table written to {}; plots and report in {}",
        csv_path.display(),
        pipeline_dir.join("report.md").display()
    )?;
    Ok(())
}

/// What the cache holds of each planned variant, as results (for a report of a sweep whose
/// stages ran elsewhere): cached stages with their figures, the others pending.
pub fn cached_results(plans: &[VariantPlan]) -> Vec<VariantResult> {
    plans
        .iter()
        .map(|plan| VariantResult {
            name: plan.variant.name.clone(),
            overrides: plan.variant.overrides.clone(),
            run_dir: plan.run_dir.clone(),
            stages: plan.stages.iter().map(dry_run_result).collect(),
        })
        .collect()
}

/// Marks as damaged each cached artifact whose stage finds its contents unusable, and as stale
/// whatever cached artifact was made from one, so that both are rebuilt.
fn check_contents(plans: &mut [VariantPlan], registry: &StageRegistry) {
    let mut checked: HashMap<(StageId, String), Option<String>> = HashMap::new();
    for plan in plans.iter_mut() {
        for i in 0..plan.stages.len() {
            let (done, rest) = plan.stages.split_at_mut(i);
            let planned = &mut rest[0];
            let PlanState::Cached(artifact) = &planned.state else {
                continue;
            };
            if let Some(reason) = stage_rebuilt_first(done, planned.stage) {
                planned.state = PlanState::Stale(reason);
                continue;
            }
            let Some(stage) = registry.get(planned.stage) else {
                continue;
            };
            let problem = checked
                .entry((planned.stage, planned.key.clone()))
                .or_insert_with(|| stage.check(artifact).err().map(|e| e.to_string()))
                .clone();
            if let Some(reason) = problem {
                planned.state = PlanState::Damaged(reason);
            }
        }
    }
}

/// Refuses a cache or run folder inside a local mirror folder: copying the mirror into the cache
/// would copy the cache into itself, and the download key (which hashes the mirror's files)
/// would change with every run.
pub fn check_folders(loaded: &LoadedSpec, opts: &RunOptions) -> Result<(), RunError> {
    let folders = [
        ("cache", &opts.cache_dir, "--cache"),
        ("run", &opts.runs_dir, "--runs"),
    ];
    let resolved: Vec<PathBuf> = folders.iter().map(|(_, f, _)| resolve(f)).collect();
    let mut checked = HashSet::new();
    for variant in &loaded.variants {
        for (i, file) in variant.spec.download.files.iter().enumerate() {
            for (j, mirror) in file.mirrors.iter().enumerate() {
                let Some(path) = local_mirror_path(mirror) else {
                    continue;
                };
                if !checked.insert(mirror.clone()) || !path.is_dir() {
                    continue;
                }
                let mirror_dir = resolve(path);
                for ((what, folder, flag), inside) in folders.iter().zip(&resolved) {
                    if inside.starts_with(&mirror_dir) {
                        return Err(RunError::FolderInMirror {
                            what,
                            folder: folder.to_path_buf(),
                            mirror: mirror.clone(),
                            key: format!("download.files[{i}].mirrors[{j}]"),
                            flag,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// The absolute, link-free form of a path that may not exist yet: its longest existing
/// ancestor resolved, the rest appended.
pub(crate) fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Fails before anything runs if a stage that must run has no implementation.
fn check_implemented(
    plans: &[VariantPlan],
    registry: &StageRegistry,
    opts: &RunOptions,
) -> Result<(), RunError> {
    if opts.dry_run {
        return Ok(());
    }
    for plan in plans {
        for planned in &plan.stages {
            let needs_run = !matches!(planned.state, PlanState::Cached(_));
            if needs_run && registry.get(planned.stage).is_none() {
                let previous = StageId::ALL
                    .into_iter()
                    .rev()
                    .find(|s| *s < planned.stage)
                    .map_or("(none)".to_string(), |s| s.name().to_string());
                return Err(RunError::NotImplemented {
                    stage: planned.stage,
                    previous,
                });
            }
        }
    }
    Ok(())
}

fn lookup_fresh(
    cache: &Cache,
    planned: &PlannedStage,
    opts: &RunOptions,
) -> Result<Artifact, RunError> {
    let verify = if opts.verify {
        Verify::Hashes
    } else {
        Verify::Sizes
    };
    match cache.lookup(planned.stage, &planned.key, verify) {
        Lookup::Hit(artifact) => Ok(*artifact),
        Lookup::Missing | Lookup::Damaged(_) => Err(RunError::Stage {
            stage: planned.stage,
            source: "its artifact vanished from the cache during this run".into(),
        }),
    }
}

/// Builds one artifact under its key's lock, unless another process finished it meanwhile (a
/// `replace`d artifact, forced or made from a rebuilt input, is built whatever the cache holds).
#[allow(clippy::too_many_arguments)]
fn build(
    cache: &Cache,
    registry: &StageRegistry,
    planned: &PlannedStage,
    replace: bool,
    plan: &VariantPlan,
    inputs: &BTreeMap<StageId, Artifact>,
    opts: &RunOptions,
    out: &mut dyn Write,
    world: &dyn Collective,
) -> Result<(Artifact, Outcome), RunError> {
    let stage = planned.stage;
    let mut waited = false;
    let lock = cache.lock(stage, &planned.key, || {
        waited = true;
        eprintln!(
            "  {:<12} waiting for another tinyllm process that is building it",
            stage.name()
        );
    })?;
    let damaged = matches!(planned.state, PlanState::Damaged(_));
    if (waited && (damaged || !replace)) || matches!(planned.state, PlanState::Missing) {
        let verify = if opts.verify {
            Verify::Hashes
        } else {
            Verify::Sizes
        };
        if let Lookup::Hit(artifact) = cache.lookup(stage, &planned.key, verify) {
            return Ok((*artifact, Outcome::BuiltElsewhere));
        }
    }
    let implementation = registry.get(stage).ok_or(RunError::NotImplemented {
        stage,
        previous: String::new(),
    })?;
    let pending = cache.begin(&lock)?;
    let scratch_dir = cache.scratch_dir(stage, &planned.key);
    fs::create_dir_all(&scratch_dir).map_err(|source| CacheError::Io {
        path: scratch_dir.clone(),
        source,
    })?;
    writeln!(out, "  {:<12} running…", stage.name())?;
    out.flush()?;
    if implementation.runs_on_every_rank() {
        world.agree_u64(follow::RUN);
    }
    let started = Instant::now();
    let mut cx = StageContext {
        view: plan.variant.views.get(stage),
        out_dir: &pending.dir,
        scratch_dir: &scratch_dir,
        run_dir: &plan.run_dir,
        inputs,
        quiet: opts.quiet,
    };
    let report = match implementation.run(&mut cx) {
        Ok(report) => report,
        Err(source) => {
            let _ = fs::remove_dir_all(&pending.dir);
            let source = name_user_files(source, inputs);
            return Err(RunError::Stage { stage, source });
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let manifest = Manifest {
        stage: stage.name().to_string(),
        stage_version: stage.version(),
        key: planned.key.clone(),
        config: planned.config.clone(),
        inputs: planned.inputs.clone(),
        files: Vec::new(),
        metrics: report.metrics,
        summary: report.summary,
        created_unix: now_unix(),
        elapsed_secs: secs,
        tool_version: format!("tinyllm {}", env!("CARGO_PKG_VERSION")),
    };
    let artifact = cache.publish(pending, manifest, &lock)?;
    Ok((artifact, Outcome::Ran { secs }))
}

/// Whether every rank of a job runs `stage` (see [`super::Stage::runs_on_every_rank`]).
fn runs_on_every_rank(registry: &StageRegistry, stage: StageId) -> bool {
    registry.get(stage).is_some_and(|s| s.runs_on_every_rank())
}

/// A stage's error with the cache's copies of the user's files named as the user's files (the
/// one the user can open and fix); the error itself when it names none.
fn name_user_files(err: StageFailure, inputs: &BTreeMap<StageId, Artifact>) -> StageFailure {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    let named = inputs
        .values()
        .fold(text.clone(), |text, artifact| artifact.name_origins(&text));
    if named == text { err } else { named.into() }
}

fn dry_run_result(planned: &PlannedStage) -> StageResult {
    let (outcome, summary) = match &planned.state {
        PlanState::Cached(artifact) => (Outcome::Cached, artifact.manifest.summary.clone()),
        PlanState::Missing => (Outcome::WouldRun, "would run".to_string()),
        PlanState::Forced => (Outcome::WouldRun, "would run (forced)".to_string()),
        PlanState::Damaged(reason) => (
            Outcome::WouldRun,
            format!("would rebuild: damaged ({reason})"),
        ),
        PlanState::Stale(reason) => (Outcome::WouldRun, format!("would rebuild: {reason}")),
    };
    let metrics = match &planned.state {
        PlanState::Cached(artifact) => artifact.manifest.metrics.clone(),
        _ => BTreeMap::new(),
    };
    StageResult {
        stage: planned.stage,
        key: planned.key.clone(),
        outcome,
        metrics,
        summary,
    }
}

fn print_stage_line(out: &mut dyn Write, result: &StageResult) -> io::Result<()> {
    let (word, time) = match &result.outcome {
        Outcome::Cached => ("cached", String::new()),
        Outcome::BuiltElsewhere => ("cached", "(built by another process)".to_string()),
        Outcome::Ran { secs } => ("ran", format!("in {}", human_secs(*secs))),
        Outcome::WouldRun => ("pending", String::new()),
    };
    let line = format!(
        "  {:<12} {:<8} {}  {:<9} {}",
        result.stage.name(),
        word,
        &result.key[..16],
        time,
        result.summary
    );
    writeln!(out, "{}", line.trim_end())
}

/// `0.4 s`, `12.3 s`, `4 min 05 s`.
pub fn human_secs(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = secs.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

fn run_folder_err(path: &Path) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::RunFolder {
        path: path.to_path_buf(),
        source,
    }
}

fn write_run_spec(plan: &VariantPlan) -> Result<(), RunError> {
    let path = plan.run_dir.join("spec.toml");
    let text = format!(
        "# The resolved spec of this variant, as tinyllm ran it.\n{}",
        toml::to_string(&plan.variant.spec).expect("a spec serializes to TOML")
    );
    fsutil::write_atomic(&path, text.as_bytes()).map_err(run_folder_err(&path))
}

/// `runs/<pipeline>/<variant>/artifacts/<stage>` → the artifact's folder in the cache.
fn link_artifact(run_dir: &Path, stage: StageId, artifact: &Artifact) -> Result<(), RunError> {
    let link = run_dir.join("artifacts").join(stage.name());
    let target = artifact
        .dir
        .canonicalize()
        .unwrap_or_else(|_| artifact.dir.clone());
    fsutil::symlink_atomic(&target, &link).map_err(run_folder_err(&link))
}

/// Removes the run folder's links to artifacts of stages after `--until` that are not the ones
/// this variant's settings make (a link left from an earlier run of other settings would show
/// samples of another model).
fn unlink_stale_artifacts(plan: &VariantPlan) -> Result<(), RunError> {
    for (stage, key) in &plan.later_keys {
        let link = plan.run_dir.join("artifacts").join(stage.name());
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let own = Path::new(stage.name()).join(Cache::key_dir_name(key));
        if !target.ends_with(&own) {
            fs::remove_file(&link).map_err(run_folder_err(&link))?;
        }
    }
    Ok(())
}

fn write_stage_record(run_dir: &Path, results: &[StageResult]) -> Result<(), RunError> {
    let stages: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            json!({
                "stage": r.stage.name(),
                "key": r.key,
                "ran": matches!(r.outcome, Outcome::Ran { .. }),
                "summary": r.summary,
                "metrics": r.metrics,
            })
        })
        .collect();
    let path = run_dir.join("stages.json");
    let text = serde_json::to_vec_pretty(&json!({ "stages": stages })).expect("JSON serializes");
    fsutil::write_atomic(&path, &text).map_err(run_folder_err(&path))
}
