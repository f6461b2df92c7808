//! The sample stage: continues each of the spec's prompts with the trained model (KV-cache
//! decoding, see [`crate::generate`]), shows the stories on the console as they are written, and
//! keeps them in `samples.md` (for people) and `samples.json` (for scripts), in the artifact and
//! the run folder.
//!
//! Sample `i` (from 0) of every prompt draws with seed `sample.seed + i`, so the same spec gives
//! the same text.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;

use crate::fsutil;
use crate::generate::folder::ModelFolder;
use crate::generate::{GenerateOptions, Sampling, Stop, generate};
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};

pub const SAMPLES_MD: &str = "samples.md";
pub const SAMPLES_JSON: &str = "samples.json";

pub struct Sample;

impl Stage for Sample {
    fn id(&self) -> StageId {
        StageId::Sample
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let cfg = &cx.view.sample()?.sample;
        let folder = ModelFolder::open(&cx.input(StageId::Train)?.dir)?;
        let options = |i: usize| GenerateOptions {
            sampling: Sampling {
                temperature: cfg.temperature,
                top_k: cfg.top_k,
                top_p: cfg.top_p,
            },
            max_new_tokens: cfg.max_new_tokens,
            seed: cfg.seed + i as u64,
        };
        let mut markdown = String::from("# Samples\n\n");
        let _ = writeln!(
            markdown,
            "temperature {}, top-k {}, top-p {}, at most {} new tokens, seed {} + sample index.\n",
            cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, cfg.seed
        );
        let mut records = Vec::new();
        let (mut new_tokens, mut secs) = (0usize, 0.0f64);
        let stdout = std::io::stdout();
        crate::with_shape!(folder.dims(), |shape| {
            let model = folder.load(shape)?;
            let mut decoder = model.decoder();
            for prompt in &cfg.prompts {
                for i in 0..cfg.num_samples {
                    let mut out = stdout.lock();
                    let _ = write!(out, "\n  ── sample {} of {prompt:?}\n{prompt}", i + 1);
                    let streaming = !cx.quiet;
                    let generation = generate(
                        &model,
                        &mut decoder,
                        &folder.tokenizer,
                        prompt,
                        &options(i),
                        |piece| {
                            if streaming {
                                let _ = write!(out, "{piece}");
                                let _ = out.flush();
                            }
                        },
                    )?;
                    if !streaming {
                        let _ = write!(out, "{}", generation.text);
                    }
                    let _ = writeln!(out, "\n");
                    let stop = match generation.stop {
                        Stop::EndOfStory => "end of story",
                        Stop::MaxNewTokens => "max_new_tokens",
                        Stop::ContextFull => "context full",
                    };
                    let _ = writeln!(
                        markdown,
                        "## {prompt:?}, sample {}\n\n**{prompt}**{}\n\n_{} tokens, stopped at {stop}._\n",
                        i + 1,
                        generation.text,
                        generation.tokens.len()
                    );
                    new_tokens += generation.tokens.len();
                    secs += generation.secs;
                    records.push(json!({
                        "prompt": prompt,
                        "sample": i,
                        "seed": cfg.seed + i as u64,
                        "text": generation.text,
                        "tokens": generation.tokens,
                        "stop": stop,
                    }));
                }
            }
            Ok::<(), StageFailure>(())
        })?;
        for dir in [cx.out_dir, cx.run_dir] {
            let path = dir.join(SAMPLES_MD);
            fsutil::write_atomic(&path, markdown.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let json_path = cx.out_dir.join(SAMPLES_JSON);
        let text = serde_json::to_vec_pretty(&json!({ "samples": records })).expect("JSON");
        fsutil::write_atomic(&json_path, &text)
            .map_err(|e| format!("{}: {e}", json_path.display()))?;

        let mut report = StageReport::default();
        let count = records.len();
        report.metrics.insert("samples".into(), count as f64);
        report
            .metrics
            .insert("new_tokens".into(), new_tokens as f64);
        report.summary = format!(
            "{count} samples, {new_tokens} new tokens, {:.0} tokens/s; see samples.md",
            new_tokens as f64 / secs.max(1e-9)
        );
        Ok(report)
    }
}
