//! The train stage: trains the spec's model on the token shards (see [`crate::train`]).
//!
//! Output: `model.safetensors` and `config.json` (a Hugging Face Llama checkpoint of the final
//! weights), `best.safetensors` when validation was best before the end, the tokenizer's
//! `tokenizer.json` (so the folder is a self-contained checkpoint), `metrics.jsonl`,
//! `training.json` (final and best validation figures) and the loss curves `loss.svg`/`loss.png`.
//! Checkpoints live in the stage's scratch folder while it runs, so a killed run continues from
//! the newest one when the pipeline is run again.

use serde_json::json;

use crate::collective;
use crate::data::loader::LoaderError;
use crate::fsutil;
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};
use crate::stages::pretokenize::{Split, TokenShards};
use crate::stages::train_vocab::{self, TOKENIZER_JSON};
use crate::train::eval::EvalSet;
use crate::train::{TrainJob, metrics, plot, train};

pub const TRAINING_JSON: &str = "training.json";

pub struct Train;

impl Stage for Train {
    fn id(&self) -> StageId {
        StageId::Train
    }

    fn runs_on_every_rank(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let view = cx.view.train()?;
        let cfg = &view.train;
        let vocab_artifact = cx.input(StageId::TrainVocab)?;
        let tokenizer = train_vocab::open(vocab_artifact)?;
        let shards = TokenShards::open(cx.input(StageId::Pretokenize)?)?;
        let dims = view.model.dims;
        if shards.set.vocab_size != tokenizer.vocab_size() {
            return Err(format!(
                "the token shards were encoded with a {}-token vocabulary but the tokenizer has {}",
                shards.set.vocab_size,
                tokenizer.vocab_size()
            )
            .into());
        }
        if tokenizer.vocab_size() > dims.vocab_size {
            return Err(format!(
                "the tokenizer has {} tokens but model.vocab_size is {}: ids from {} up would be \
                 out of the model's range; set model.vocab_size = {} (or train_vocab.vocab_size = {})",
                tokenizer.vocab_size(),
                dims.vocab_size,
                dims.vocab_size,
                tokenizer.vocab_size(),
                dims.vocab_size
            )
            .into());
        }
        let (train_paths, val_paths) = (shards.paths(Split::Train), shards.paths(Split::Val));
        if val_paths.is_empty() {
            return Err("there is no validation text: set corpus.val_files or pretokenize.val_fraction above 0".into());
        }
        let (val_tokens, val_bytes) = shards.shards(Split::Val).fold((0u64, 0u64), |(t, b), s| {
            (t.saturating_add(s.tokens), b.saturating_add(s.text_bytes))
        });
        let eval = EvalSet::open(
            &val_paths,
            cfg.seq_len,
            cfg.eval_windows,
            val_tokens as f64 / val_bytes.max(1) as f64,
        )
        .map_err(|e| match e {
            LoaderError::TooShort { window, tokens } => format!(
                "the validation split holds {tokens} tokens, fewer than one window of \
                 train.seq_len + 1 = {window}: raise pretokenize.val_fraction, set \
                 corpus.val_files to more text, or lower train.seq_len"
            ),
            e => format!("validation split: {e}"),
        })?;
        let job = TrainJob {
            config: cfg.clone(),
            precision: view.precision,
            dims,
            llama: view.model.llama_config(),
            train_shards: train_paths,
            eval,
            checkpoints_dir: cx.scratch_dir.join("checkpoints"),
            live_metrics: Some(cx.run_dir.join(metrics::METRICS_JSONL)),
            quiet: cx.quiet,
            world: collective::world(),
        };
        let outcome = train(&job, cx.out_dir)?;
        if !job.world.leads() {
            // Rank 0 writes the artifact; the others only trained with it.
            return Ok(StageReport::default());
        }

        let out = cx.out_dir;
        let write = |name: &str, bytes: &[u8]| {
            let path = out.join(name);
            fsutil::write_atomic(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
        };
        let tokenizer_bytes = std::fs::read(vocab_artifact.file(TOKENIZER_JSON))?;
        write(TOKENIZER_JSON, &tokenizer_bytes)?;
        write(
            metrics::METRICS_JSONL,
            metrics::to_jsonl(&outcome.records).as_bytes(),
        )?;
        plot::write_loss_plots(&[("", outcome.records.as_slice())], out, "loss")?;
        let tokens_per_sec = outcome.tokens_seen as f64 / outcome.elapsed_secs.max(1e-9);
        let summary_json = json!({
            "steps": outcome.steps,
            "tokens": outcome.tokens_seen,
            "params": outcome.params,
            "precision": job.precision,
            "elapsed_secs": outcome.elapsed_secs,
            "max_time_secs": cfg.max_time.map(|b| b.secs()),
            "stopped_by": if outcome.stopped_by_time { "max_time" } else { "max_iters" },
            "tokens_per_sec": tokens_per_sec,
            "validation_windows": job.eval.windows(),
            "step_tokens_per_sec": outcome.time.step_tokens_per_sec(
                (cfg.batch_size * cfg.seq_len * cfg.grad_accum_steps * job.world.size()) as u64
            ),
            "ranks": job.world.size(),
            "time_this_process": outcome.time,
            "final": {
                "val_loss": outcome.final_eval.loss,
                "val_bpb": outcome.final_eval.bits_per_byte,
            },
            "best": outcome.best,
        });
        write(
            TRAINING_JSON,
            &serde_json::to_vec_pretty(&summary_json).expect("JSON serializes"),
        )?;

        let mut report = StageReport::default();
        for (name, value) in [
            ("steps", outcome.steps as f64),
            ("tokens", outcome.tokens_seen as f64),
            ("params", outcome.params as f64),
            ("val_loss", outcome.final_eval.loss),
            ("val_bpb", outcome.final_eval.bits_per_byte),
            ("best_val_bpb", outcome.best.val_bpb),
            ("best_step", outcome.best.step as f64),
            ("tokens_per_sec", tokens_per_sec.round()),
        ] {
            report.metrics.insert(name.to_string(), value);
        }
        report.summary = format!(
            "{} steps{} in {}, {} tokens, validation {:.4} bits/byte ({:.3} nats/token); best {:.4} at step {}{}",
            outcome.steps,
            match cfg.max_time {
                Some(budget) if outcome.stopped_by_time => format!(" (the {budget} budget)"),
                _ => String::new(),
            },
            job.precision,
            outcome.tokens_seen,
            outcome.final_eval.bits_per_byte,
            outcome.final_eval.loss,
            outcome.best.val_bpb,
            outcome.best.step,
            outcome
                .resumed_from
                .map_or(String::new(), |s| format!(" (resumed at step {s})"))
        );
        Ok(report)
    }
}
