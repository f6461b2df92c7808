//! The ranks after the first of a data-parallel job: they walk the same plan as rank 0, run the
//! stages that every rank runs (training) when rank 0 runs them, and otherwise wait until rank 0
//! has the artifact in the cache. They write nothing: no artifact, no run folder, no output.

use std::collections::BTreeMap;
use std::fs;

use super::{RunError, RunOptions, lookup_fresh, plan, runs_on_every_rank};
use crate::collective::Collective;
use crate::fsutil;
use crate::pipeline::cache::{Cache, CacheError};
use crate::pipeline::overlay::LoadedSpec;
use crate::pipeline::stage::{StageContext, StageRegistry};

/// What rank 0 announces for a stage every rank runs: it runs now, or it is already built.
pub(super) const RUN: u64 = 1;
pub(super) const SKIP: u64 = 0;

/// Follows rank 0 through every variant and stage of `loaded`.
pub(super) fn follow(
    loaded: &LoadedSpec,
    registry: &StageRegistry,
    opts: &RunOptions,
    world: &dyn Collective,
) -> Result<(), RunError> {
    let cache = Cache::new(&opts.cache_dir);
    for plan in plan(loaded, opts) {
        let mut artifacts = BTreeMap::new();
        for planned in &plan.stages {
            let stage = planned.stage;
            if runs_on_every_rank(registry, stage) && world.agree_u64(SKIP) == RUN {
                let implementation = registry
                    .get(stage)
                    .expect("a stage every rank runs is registered");
                // The stage writes its artifact on rank 0 only; this folder catches anything a
                // stage writes regardless, and goes when it ends.
                let out_dir = std::env::temp_dir().join(format!(
                    "tinyllm-rank{}-{}",
                    world.rank(),
                    fsutil::unique_suffix()
                ));
                let scratch_dir = cache.scratch_dir(stage, &planned.key);
                for dir in [&out_dir, &scratch_dir] {
                    fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                }
                let mut cx = StageContext {
                    view: plan.variant.views.get(stage),
                    out_dir: &out_dir,
                    scratch_dir: &scratch_dir,
                    run_dir: &plan.run_dir,
                    inputs: &artifacts,
                    quiet: true,
                };
                let result = implementation.run(&mut cx);
                let _ = fs::remove_dir_all(&out_dir);
                result.map_err(|source| RunError::Stage { stage, source })?;
            }
            world.barrier();
            artifacts.insert(stage, lookup_fresh(&cache, planned, opts)?);
        }
    }
    Ok(())
}
