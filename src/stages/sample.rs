//! The sample stage: continues each of the spec's prompts with the trained model (KV-cache
//! decoding, see [`crate::generate`]), shows the stories on the console as they are written, and
//! keeps them in `samples.md` (for people) and `samples.json` (for scripts), in the artifact and
//! the run folder.
//!
//! Sample `i` (from 0) of every prompt draws with seed `sample.seed + i`, so the same spec gives
//! the same text.

use std::fmt::Write as _;
use std::io::{self, Write as _};

use serde_json::{Value as Json, json};

use crate::fsutil;
use crate::generate::folder::ModelFolder;
use crate::generate::{GenerateOptions, Generation, Prompt, SampleSink, Sampling, sample_folder};
use crate::pipeline::spec::SampleConfig;
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};

pub const SAMPLES_MD: &str = "samples.md";
pub const SAMPLES_JSON: &str = "samples.json";

pub struct Sample;

impl Stage for Sample {
    fn id(&self) -> StageId {
        StageId::Sample
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let view = cx.view.sample()?;
        let cfg = &view.sample;
        let folder = ModelFolder::open(&cx.input(StageId::Train)?.dir)?;
        let mut sink = StageSink::new(cfg, !cx.quiet);
        let prompts = cfg.prompts.iter().flat_map(|prompt| {
            (0..cfg.num_samples).map(move |i| {
                Ok(Prompt {
                    text: prompt.clone(),
                    options: GenerateOptions {
                        sampling: Sampling {
                            temperature: cfg.temperature,
                            top_k: cfg.top_k,
                            top_p: cfg.top_p,
                        },
                        max_new_tokens: cfg.max_new_tokens,
                        seed: cfg.seed + i as u64,
                        ignore_end_of_story: false,
                    },
                })
            })
        });
        sample_folder(&folder, cfg.device, view.precision, prompts, &mut sink)?;

        for dir in [cx.out_dir, cx.run_dir] {
            let path = dir.join(SAMPLES_MD);
            fsutil::write_atomic(&path, sink.markdown.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let json_path = cx.out_dir.join(SAMPLES_JSON);
        let text = serde_json::to_vec_pretty(&json!({ "samples": sink.records })).expect("JSON");
        fsutil::write_atomic(&json_path, &text)
            .map_err(|e| format!("{}: {e}", json_path.display()))?;

        let mut report = StageReport::default();
        let count = sink.records.len();
        let new_tokens = sink.new_tokens;
        report.metrics.insert("samples".into(), count as f64);
        report
            .metrics
            .insert("new_tokens".into(), new_tokens as f64);
        report.summary = format!(
            "{count} samples, {new_tokens} new tokens, {:.0} tokens/s; see samples.md",
            new_tokens as f64 / sink.secs.max(1e-9)
        );
        Ok(report)
    }
}

/// Shows each story on the console (streamed unless quiet) and keeps it for `samples.md` and
/// `samples.json`.
struct StageSink {
    streaming: bool,
    /// Prompts come in order, each `num_samples` times; sample `i` draws with seed `seed + i`.
    num_samples: usize,
    markdown: String,
    records: Vec<Json>,
    new_tokens: usize,
    secs: f64,
}

impl StageSink {
    fn new(cfg: &SampleConfig, streaming: bool) -> Self {
        let mut markdown = String::from("# Samples\n\n");
        let _ = writeln!(
            markdown,
            "temperature {}, top-k {}, top-p {}, at most {} new tokens, seed {} + sample index.\n",
            cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, cfg.seed
        );
        StageSink {
            streaming,
            num_samples: cfg.num_samples,
            markdown,
            records: Vec::new(),
            new_tokens: 0,
            secs: 0.0,
        }
    }
}

impl StageSink {
    /// Which sample of its prompt the one at hand is (those finished so far, per prompt).
    fn index(&self) -> usize {
        self.records.len() % self.num_samples
    }
}

impl SampleSink for StageSink {
    fn start(&mut self, prompt: &Prompt) -> io::Result<()> {
        // The console is a courtesy: a closed stdout must not fail the stage.
        let text = &prompt.text;
        let _ = write!(
            io::stdout(),
            "\n  ── sample {} of {text:?}\n{text}",
            self.index() + 1
        );
        Ok(())
    }

    fn piece(&mut self, piece: &str) -> io::Result<()> {
        if self.streaming {
            let mut out = io::stdout();
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
        Ok(())
    }

    fn finish(&mut self, prompt: &Prompt, generation: &Generation) -> io::Result<()> {
        let mut out = io::stdout();
        if !self.streaming {
            let _ = write!(out, "{}", generation.text);
        }
        let _ = writeln!(out, "\n");
        let (text, stop) = (&prompt.text, generation.stop.as_str());
        let _ = writeln!(
            self.markdown,
            "## {text:?}, sample {}\n\n**{text}**{}\n\n_{} tokens, stopped at {stop}._\n",
            self.index() + 1,
            generation.text,
            generation.tokens.len()
        );
        self.new_tokens += generation.tokens.len();
        self.secs += generation.secs;
        self.records.push(json!({
            "prompt": text,
            "sample": self.index(),
            "seed": prompt.options.seed,
            "text": generation.text,
            "tokens": generation.tokens,
            "stop": stop,
        }));
        Ok(())
    }
}
