//! The pipeline spec: one typed section per stage, as a TOML file states it.
//!
//! Every struct denies unknown fields and has defaults, so a spec file states only what differs
//! from the tutorial's recipe. Fields that do not change a stage's result (threads, retries,
//! logging) are listed in each section's `NON_SEMANTIC` and stay out of the cache key. The rules
//! types cannot express are checked by [`PipelineSpec::validate`] (in `spec/validate.rs`); what
//! each stage reads of a spec is its view ([`crate::pipeline::view`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{ModelDims, Preset};

mod validate;

pub use validate::Violation;

/// A whole pipeline: its name and folders, one section per stage, and an optional sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub pipeline: PipelineSection,
    #[serde(default)]
    pub download: DownloadConfig,
    #[serde(default)]
    pub corpus: CorpusConfig,
    #[serde(default)]
    pub train_vocab: TrainVocabConfig,
    #[serde(default)]
    pub pretokenize: PretokenizeConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    /// How the Slurm executor submits jobs (`pipeline.executor = "slurm"` or `--executor slurm`).
    #[serde(default, skip_serializing_if = "SlurmConfig::is_default")]
    pub slurm: SlurmConfig,
    /// Dotted keys mapped to lists of values; the pipeline runs once per combination.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<serde_json::Value>>,
}

/// The most worker threads a run may ask for (`pipeline.threads`, `--threads`): each is an OS
/// thread created up front, and more than this many helps no machine tinyllm runs on.
pub const MAX_THREADS: usize = 1024;

/// Sections whose fields are partly non-semantic.
pub trait Section {
    /// Field names (top level of the section) that do not change the stage's output.
    const NON_SEMANTIC: &'static [&'static str] = &[];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// The pipeline's name: its run folder is `runs/<name>/`.
    pub name: String,
    /// Where artifacts are cached (default `.tinyllm/cache`; `--cache` and `TINYLLM_CACHE` win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// Where run folders go (default `runs`; `--runs` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_dir: Option<String>,
    /// Worker threads for every stage (default: all cores). Never changes a result's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Where the stages run: `local` (this process, the default) or `slurm` (jobs submitted
    /// with sbatch, sharing the cache). `--executor` wins. Never changes a result's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorKind>,
}

/// Where the stages of a run are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// In this process, one stage after another.
    #[default]
    Local,
    /// As Slurm jobs: the stages the variants share in one job, each variant's own stages in
    /// one task of a job array that waits for it.
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "local" => Ok(ExecutorKind::Local),
            "slurm" => Ok(ExecutorKind::Slurm),
            other => Err(format!(
                "unknown executor `{other}`; executors are local, slurm"
            )),
        }
    }
}

/// The most tasks one variant's job may ask for (`slurm.ntasks`).
pub const MAX_SLURM_TASKS: u32 = 4096;

/// The Slurm executor's settings: none of them changes a result, so none is in a key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// sbatch options for every job, one per item, e.g. ["--partition=cpu", "--time=02:00:00"];
    /// each becomes an `#SBATCH` line of the generated script (`--slurm` adds to them).
    pub options: Vec<String>,
    /// Tasks of each variant's job (default 1). More than one runs the job through `srun` and
    /// trains data-parallel over them (a build with `--features mpi`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntasks: Option<u32>,
    /// srun options of a job of several tasks, e.g. ["--mpi=pmix"] where Open MPI needs Slurm's
    /// PMIx to start its ranks.
    pub srun_options: Vec<String>,
    /// Let the cache or run folders be on a node-local file system (/tmp, tmpfs): right for a
    /// single-node cluster only, as the jobs of other nodes would not see them.
    pub allow_node_local_cache: bool,
}

/// The most sbatch options a spec and `--slurm` may give together.
pub const MAX_SLURM_OPTIONS: usize = 64;

impl SlurmConfig {
    fn is_default(&self) -> bool {
        *self == SlurmConfig::default()
    }

    /// Refuses an sbatch or srun option that would not be one `#SBATCH` line or one word: the generated script
    /// must run exactly the options the user wrote, and a line break would let one add commands.
    pub fn check_option(option: &str) -> Result<(), String> {
        if !option.starts_with('-') {
            return Err(format!(
                "{option:?} is not an option (they start with '-', e.g. --partition=cpu)"
            ));
        }
        if option.len() > 1000 {
            return Err(format!("an option of {} bytes is too long", option.len()));
        }
        if option.chars().any(char::is_control) {
            return Err(format!(
                "{option:?} holds a line break or control character"
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// download

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// The files that make up the corpus, each fetched from the first mirror that works.
    pub files: Vec<DownloadFile>,
    /// Attempts per mirror after the first one fails on a network error.
    pub retries: u32,
    /// Seconds without progress before a connection is given up.
    pub timeout_secs: u64,
}

impl Section for DownloadConfig {
    const NON_SEMANTIC: &'static [&'static str] = &["retries", "timeout_secs"];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadFile {
    /// Name of the file in the corpus (default: the last segment of the first mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URLs (`https://`, `http://`, `file://`) or local paths (files or folders), tried in order.
    pub mirrors: Vec<String>,
    /// Expected sha256 of the fetched file (hex). Checked before anything is unpacked; when it is
    /// given, the mirrors stay out of the cache key (any mirror gives the same bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Unpack a `.tar.gz`/`.tgz` archive (default: true for those extensions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
}

const HF_TINYSTORIES: &str = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main";
const MODELSCOPE_TINYSTORIES: &str =
    "https://www.modelscope.cn/datasets/AI-ModelScope/TinyStories/resolve/master";

impl Default for DownloadConfig {
    fn default() -> Self {
        let file = |name: &str, unpack: Option<bool>| DownloadFile {
            name: Some(name.to_string()),
            mirrors: vec![
                format!("{HF_TINYSTORIES}/{name}"),
                format!("{MODELSCOPE_TINYSTORIES}/{name}"),
            ],
            sha256: None,
            unpack,
        };
        DownloadConfig {
            files: vec![
                file("TinyStories_all_data.tar.gz", Some(true)),
                file("TinyStories-valid.txt", None),
            ],
            retries: 3,
            timeout_secs: 60,
        }
    }
}

/// The URL schemes a mirror may use; anything else with `://` is refused when the spec loads.
pub const MIRROR_SCHEMES: [&str; 3] = ["https://", "http://", "file://"];

/// The most files a local mirror folder may hold: each is hashed for the cache key on every
/// run, so a mirror pointing at a home folder or `/` is refused rather than read.
pub const MAX_MIRROR_FILES: usize = 100_000;

/// Whether a mirror is fetched over the network.
pub fn is_http_mirror(mirror: &str) -> bool {
    mirror.starts_with("http://") || mirror.starts_with("https://")
}

/// The local file or folder a mirror names (`file://` stripped), or `None` for a URL.
pub fn local_mirror_path(mirror: &str) -> Option<&std::path::Path> {
    if is_http_mirror(mirror) {
        return None;
    }
    Some(std::path::Path::new(
        mirror.strip_prefix("file://").unwrap_or(mirror),
    ))
}

impl DownloadFile {
    /// The file's name in the corpus: the explicit `name`, else the first mirror's last segment.
    pub fn file_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let first = self.mirrors.first().map(String::as_str).unwrap_or("");
        let trimmed = first.split(['?', '#']).next().unwrap_or("");
        trimmed
            .trim_end_matches('/')
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Whether the fetched file is a gzipped tarball to unpack.
    pub fn should_unpack(&self) -> bool {
        self.unpack.unwrap_or_else(|| {
            let name = self.file_name();
            name.ends_with(".tar.gz") || name.ends_with(".tgz")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// train_vocab

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// Byte-fallback BPE with SentencePiece-style word boundaries.
    Bpe,
    /// One token per character of the corpus.
    Char,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainVocabConfig {
    pub kind: TokenizerKind,
    /// Vocabulary size, special and byte tokens included (at most 65,535: tokens are stored as u16).
    pub vocab_size: usize,
    /// Upper bound on the bytes of corpus text the tokenizer is trained on.
    pub max_train_bytes: u64,
    /// Seed of the deterministic sample of the corpus the tokenizer is trained on.
    pub seed: u64,
}

impl Section for TrainVocabConfig {}

impl Default for TrainVocabConfig {
    fn default() -> Self {
        TrainVocabConfig {
            kind: TokenizerKind::Bpe,
            vocab_size: 4096,
            max_train_bytes: 100_000_000,
            seed: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pretokenize

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// `.json` files as JSON shards; other files split by `separator` if they contain it, else
    /// one story per line.
    Auto,
    /// JSON arrays of objects with a `story` field.
    Json,
    /// One story per line.
    Lines,
    /// Stories separated by `separator`.
    Separator,
}

/// Which files of the downloaded corpus hold the text, and how stories are laid out in them.
/// Read by both `train_vocab` (training files only) and `pretokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusConfig {
    /// Glob patterns (`*`, `?`; relative to the corpus folder) of the training files.
    pub train_files: Vec<String>,
    /// Glob patterns of the validation files; when empty, `pretokenize.val_fraction` of the
    /// stories is held out instead.
    pub val_files: Vec<String>,
    pub format: TextFormat,
    /// Story separator for `format = "separator"` (and for `auto` text files that contain it).
    pub separator: String,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig {
            train_files: vec!["*.json".to_string()],
            val_files: vec!["TinyStories-valid.txt".to_string()],
            format: TextFormat::Auto,
            separator: "<|endoftext|>".to_string(),
        }
    }
}

impl CorpusConfig {
    /// How stories are laid out in the corpus files.
    pub fn layout(&self) -> StoryLayout {
        StoryLayout {
            format: self.format,
            separator: self.separator.clone(),
        }
    }
}

/// The part of `[corpus]` that reading one file's stories needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoryLayout {
    pub format: TextFormat,
    pub separator: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PretokenizeConfig {
    /// Fraction of whole stories held out for validation when `corpus.val_files` is empty.
    pub val_fraction: f64,
}

impl Section for PretokenizeConfig {}

impl Default for PretokenizeConfig {
    fn default() -> Self {
        PretokenizeConfig { val_fraction: 0.01 }
    }
}

// ---------------------------------------------------------------------------------------------
// model (part of the train stage's key)

/// The model's shape: a preset, or explicit dimensions (which must agree with the preset when both
/// are given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// Defaults to the tokenizer's `train_vocab.vocab_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_of: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<usize>,
    /// Share the output head's weights with the token embedding (as the tutorial and llama2.c do).
    pub tie_embeddings: bool,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Kept for the tutorial's config; only 0.0 is supported (the engine has no dropout).
    pub dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            preset: None,
            dim: None,
            n_layers: None,
            n_heads: None,
            n_kv_heads: None,
            vocab_size: None,
            multiple_of: None,
            max_seq_len: None,
            tie_embeddings: true,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            dropout: 0.0,
        }
    }
}

impl ModelConfig {
    /// The model's dimensions: the preset (default `tutorial`) with explicit fields on top. With
    /// an explicit preset, a field that disagrees with it is an error naming both.
    pub fn resolve(&self, tokenizer_vocab: usize) -> Result<ModelDims, (String, String)> {
        let base = self.preset.unwrap_or(Preset::Tutorial).dims();
        let pick = |key: &str, given: Option<usize>, preset_value: usize| match (self.preset, given)
        {
            (Some(preset), Some(v)) if v != preset_value => Err((
                format!("model.{key}"),
                format!(
                    "{v} conflicts with preset {} ({key} {preset_value}); drop `preset` to use custom dimensions",
                    preset.name()
                ),
            )),
            (_, Some(v)) => Ok(v),
            (_, None) => Ok(preset_value),
        };
        let vocab_default = if self.preset.is_some() {
            base.vocab_size
        } else {
            tokenizer_vocab
        };
        Ok(ModelDims {
            dim: pick("dim", self.dim, base.dim)?,
            n_layers: pick("n_layers", self.n_layers, base.n_layers)?,
            n_heads: pick("n_heads", self.n_heads, base.n_heads)?,
            n_kv_heads: pick("n_kv_heads", self.n_kv_heads, base.n_kv_heads)?,
            vocab_size: pick("vocab_size", self.vocab_size, vocab_default)?,
            multiple_of: pick("multiple_of", self.multiple_of, base.multiple_of)?,
            max_seq_len: pick("max_seq_len", self.max_seq_len, base.max_seq_len)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// train

/// Where the model trains or generates (see [`crate::engine::Device`]).
pub use crate::engine::Device;
/// Which optimizer trains the block matrices (see [`crate::engine::OptimizerKind`]).
pub use crate::engine::OptimizerKind;
use crate::engine::OptimizerSettings;
/// The precision of the matmuls (see [`crate::engine::Precision`]).
pub use crate::engine::PrecisionSetting;
/// The learning-rate schedule's settings (see [`crate::train::schedule`]).
pub use crate::train::schedule::{MinLr, ScheduleKind, TimeBudget};

/// `train.decay_fraction` when a spec leaves it out.
pub const DEFAULT_DECAY_FRACTION: f64 = 0.2;

/// Settings added after caches existed stay out of the key while they hold their default, so
/// the keys of older artifacts still match.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn is_default_decay_fraction(value: &f64) -> bool {
    *value == DEFAULT_DECAY_FRACTION
}

/// `train.muon_lr` when a spec leaves it out: the modded-nanogpt speedruns' Muon learning rate.
pub const DEFAULT_MUON_LR: f64 = 0.02;

fn is_default_muon_lr(value: &f64) -> bool {
    *value == DEFAULT_MUON_LR
}

fn is_default_muon_momentum(value: &f64) -> bool {
    *value == OptimizerSettings::MUON_MOMENTUM
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (at most `model.max_seq_len`).
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub grad_accum_steps: usize,
    /// Peak learning rate, reached after `warmup_iters`.
    pub lr: f64,
    /// Learning rate at the end of the decay: a value (`1e-4`) or a share of `lr` (`"10%"`).
    pub min_lr: MinLr,
    /// Steps of linear warmup from 0 to `lr`.
    pub warmup_iters: usize,
    /// Optimizer steps in total (with `max_time`: at most).
    pub max_iters: usize,
    /// A wall-clock budget for the training loop (`"10m"`, `"2h"`): training stops when it is
    /// spent or at `max_iters`, whichever comes first, and the schedule follows the larger share
    /// of the two. It counts steps, validation passes and checkpoints, not the final validation.
    /// The cache key covers the budget, not the steps a machine reaches in it (`training.json`
    /// records those): the same spec on a faster machine is a cache hit of the slower result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time: Option<TimeBudget>,
    /// The decay after the warmup: `"cosine"` (to `min_lr` over the rest of the run), `"wsd"`
    /// (warmup-stable-decay: `lr` until the last `decay_fraction`, then linear to `min_lr`) or
    /// `"wsd_sqrt"` (the same with a 1 − √t decay).
    #[serde(skip_serializing_if = "is_default")]
    pub schedule: ScheduleKind,
    /// The share of the run the `wsd` schedules spend decaying, in (0, 1].
    #[serde(skip_serializing_if = "is_default_decay_fraction")]
    pub decay_fraction: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// `"adamw"`, or `"muon"`: Muon (momentum, then Newton–Schulz orthogonalisation) for the
    /// 2-D weights of the blocks, AdamW (`lr`, `beta1`, `beta2`, `weight_decay`) for the
    /// embeddings, the head and the norms.
    #[serde(skip_serializing_if = "is_default")]
    pub optimizer: OptimizerKind,
    /// Muon's learning rate at the schedule's peak; warmup and decay scale it as they scale `lr`.
    #[serde(skip_serializing_if = "is_default_muon_lr")]
    pub muon_lr: f64,
    /// Muon's (Nesterov) momentum, in [0, 1).
    #[serde(skip_serializing_if = "is_default_muon_momentum")]
    pub muon_momentum: f64,
    /// Muon's decoupled weight decay.
    #[serde(skip_serializing_if = "is_default")]
    pub muon_weight_decay: f64,
    /// Global gradient-norm clip (0 disables it).
    pub grad_clip: f64,
    /// Steps between validation passes (and one after the last step).
    pub eval_interval: usize,
    /// Validation windows of `seq_len + 1` tokens per pass: every window of the split when it
    /// has at most this many, else this many spread evenly over it (0: always all of them).
    pub eval_windows: usize,
    /// Steps between checkpoints (a resumed run continues from the latest one).
    pub checkpoint_interval: usize,
    /// Checkpoints kept besides the best one.
    pub keep_checkpoints: usize,
    /// Steps between log lines.
    pub log_interval: usize,
    pub seed: u64,
    /// Where the model trains: `"cpu"`, `"cuda"` (the first GPU) or `"cuda:N"`.
    pub device: Device,
    /// The matmuls' precision: `"f32"`, `"bf16"` (bf16 operands, f32 sums, f32 master weights)
    /// or `"auto"` (bf16 where the CPU has native bf16 dot products, else f32).
    pub precision: PrecisionSetting,
}

impl Section for TrainConfig {
    /// The device changes the last bits of a result, not what it is (like the thread count):
    /// a run cached or checkpointed on one device is reused or resumed on another. The
    /// precision as written (`auto`) is not keyed; the precision it resolves to is (see
    /// [`super::view::TrainView`]).
    const NON_SEMANTIC: &'static [&'static str] = &[
        "checkpoint_interval",
        "keep_checkpoints",
        "log_interval",
        "device",
        "precision",
    ];
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 8,
            seq_len: 256,
            grad_accum_steps: 4,
            lr: 5e-4,
            min_lr: MinLr::default(),
            warmup_iters: 1000,
            max_iters: 100_000,
            max_time: None,
            schedule: ScheduleKind::Cosine,
            decay_fraction: DEFAULT_DECAY_FRACTION,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            optimizer: OptimizerKind::AdamW,
            muon_lr: DEFAULT_MUON_LR,
            muon_momentum: OptimizerSettings::MUON_MOMENTUM,
            muon_weight_decay: 0.0,
            grad_clip: 1.0,
            eval_interval: 2000,
            eval_windows: 512,
            checkpoint_interval: 2000,
            keep_checkpoints: 2,
            log_interval: 10,
            seed: 1337,
            device: Device::Cpu,
            precision: PrecisionSetting::Auto,
        }
    }
}

impl TrainConfig {
    /// The optimizer these settings ask for; Muon's learning rate as a multiple of `lr`, so the
    /// schedule carries both.
    pub fn optimizer_settings(&self) -> OptimizerSettings {
        OptimizerSettings {
            kind: self.optimizer,
            muon_lr_scale: self.muon_lr / self.lr,
            muon_momentum: self.muon_momentum,
            muon_weight_decay: self.muon_weight_decay,
            ..OptimizerSettings::adamw(self.beta1, self.beta2, self.weight_decay)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sample

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Story openings to continue; an empty string starts from BOS alone.
    pub prompts: Vec<String>,
    /// Samples per prompt.
    pub num_samples: usize,
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 disables it).
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f64,
    pub seed: u64,
    /// Where the model generates: `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: Device,
    /// The matmuls' precision: `"f32"`, `"bf16"` (bf16 weights, f32 sums: half the bytes a
    /// token reads) or `"auto"` (bf16 on a CPU with native bf16 dot products).
    pub precision: PrecisionSetting,
}

impl Section for SampleConfig {
    /// Like `train.device`: the device changes the last bits of the logits, not the recipe.
    /// The precision is keyed as resolved, by the sample stage's view (`auto` means different
    /// precisions on different machines).
    const NON_SEMANTIC: &'static [&'static str] = &["device", "precision"];
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            prompts: vec!["Once upon a time".to_string()],
            num_samples: 1,
            max_new_tokens: 256,
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 42,
            device: Device::Cpu,
            precision: PrecisionSetting::Auto,
        }
    }
}

/// The JSON Schema of a pipeline spec, as `tinyllm schema` prints it.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineSpec)).expect("a schema serializes to JSON")
}
