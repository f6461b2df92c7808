//! The rules of a spec that its types cannot express, checked once when the spec is loaded so
//! that a mistake is reported before any stage runs.

use super::{Device, OptimizerKind, PipelineSpec, TextFormat};
use crate::model::{Allocation, Footprint, ModelDims};
use crate::tokenizer::{MAX_VOCAB_SIZE, MIN_VOCAB};

/// The most stories the sample stage writes (prompts × `num_samples`): its report is read by a
/// person, and a count of 10^12 would otherwise run until the disk is full.
pub const MAX_SAMPLES: usize = 10_000;

/// One violated rule of a spec: the dotted key and what is wrong with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub key: String,
    pub message: String,
}

impl PipelineSpec {
    /// Checks the rules that types cannot express. Returns the first violation. The model's
    /// dimensions are checked by [`ModelDims::check`], the rule set model construction applies
    /// too, so a spec that passes here always makes a model.
    pub fn validate(&self) -> Result<(), Violation> {
        let fail = |key: &str, message: String| {
            Err(Violation {
                key: key.to_string(),
                message,
            })
        };
        let name = &self.pipeline.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            return fail(
                "pipeline.name",
                format!(
                    "{name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
                ),
            );
        }
        match self.pipeline.threads {
            Some(0) => return fail("pipeline.threads", "must be at least 1".into()),
            Some(threads) if threads > super::MAX_THREADS => {
                return fail(
                    "pipeline.threads",
                    format!(
                        "{threads} is more than {}; use at most the machine's cores",
                        super::MAX_THREADS
                    ),
                );
            }
            _ => {}
        }
        for (key, options) in [
            ("slurm.options", &self.slurm.options),
            ("slurm.srun_options", &self.slurm.srun_options),
        ] {
            if options.len() > super::MAX_SLURM_OPTIONS {
                return fail(
                    key,
                    format!(
                        "{} options are more than {}",
                        options.len(),
                        super::MAX_SLURM_OPTIONS
                    ),
                );
            }
            for (i, option) in options.iter().enumerate() {
                super::SlurmConfig::check_option(option)
                    .or_else(|message| fail(&format!("{key}[{i}]"), message))?;
            }
        }
        match self.slurm.ntasks {
            Some(0) => return fail("slurm.ntasks", "must be at least 1".into()),
            Some(tasks) if tasks > super::MAX_SLURM_TASKS => {
                return fail(
                    "slurm.ntasks",
                    format!("{tasks} is more than {}", super::MAX_SLURM_TASKS),
                );
            }
            _ => {}
        }
        if self.download.files.is_empty() {
            return fail("download.files", "must list at least one file".into());
        }
        for (i, file) in self.download.files.iter().enumerate() {
            let key = format!("download.files[{i}]");
            if file.mirrors.is_empty() {
                return fail(
                    &format!("{key}.mirrors"),
                    "must list at least one mirror".into(),
                );
            }
            for (j, mirror) in file.mirrors.iter().enumerate() {
                if let Some(message) = mirror_problem(mirror) {
                    return fail(&format!("{key}.mirrors[{j}]"), message);
                }
            }
            let name = file.file_name();
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
                return fail(
                    &format!("{key}.name"),
                    format!("{name:?} is not a plain file name; set `name`"),
                );
            }
            if let Some(first) = self.download.files[..i]
                .iter()
                .position(|other| other.file_name() == name)
            {
                return fail(
                    &format!("{key}.name"),
                    format!(
                        "{name:?} is also download.files[{first}]'s name: both would be saved as one file; give each its own `name`"
                    ),
                );
            }
            if let Some(sha) = &file.sha256
                && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return fail(
                    &format!("{key}.sha256"),
                    format!("{sha:?} is not 64 hexadecimal digits"),
                );
            }
        }

        let vocab = self.train_vocab.vocab_size;
        if vocab > MAX_VOCAB_SIZE {
            return fail(
                "train_vocab.vocab_size",
                format!("{vocab} is above {MAX_VOCAB_SIZE}: token ids are stored as u16"),
            );
        }
        if vocab < MIN_VOCAB {
            return fail(
                "train_vocab.vocab_size",
                format!(
                    "{vocab} is below {MIN_VOCAB}, the 3 special tokens plus 256 byte-fallback tokens"
                ),
            );
        }
        if self.train_vocab.max_train_bytes == 0 {
            return fail("train_vocab.max_train_bytes", "must be positive".into());
        }

        let p = &self.pretokenize;
        if !(0.0..1.0).contains(&p.val_fraction) {
            return fail(
                "pretokenize.val_fraction",
                format!("{} must be in [0, 1)", p.val_fraction),
            );
        }
        let corpus = &self.corpus;
        if corpus.train_files.is_empty() {
            return fail(
                "corpus.train_files",
                "must list at least one pattern".into(),
            );
        }
        if corpus.format == TextFormat::Separator && corpus.separator.is_empty() {
            return fail("corpus.separator", "must not be empty".into());
        }

        let dims = self.model_dims()?;
        dims.check().map_err(|broken| Violation {
            key: format!("model.{}", broken.field),
            message: broken.message,
        })?;
        if dims.vocab_size < vocab {
            return fail(
                "model.vocab_size",
                format!(
                    "{} is smaller than the tokenizer's vocab_size {vocab}",
                    dims.vocab_size
                ),
            );
        }
        let m = &self.model;
        if m.norm_eps.is_nan() || m.norm_eps <= 0.0 {
            return fail("model.norm_eps", format!("{} must be positive", m.norm_eps));
        }
        if m.rope_theta.is_nan() || m.rope_theta <= 0.0 {
            return fail(
                "model.rope_theta",
                format!("{} must be positive", m.rope_theta),
            );
        }
        if m.dropout != 0.0 {
            return fail(
                "model.dropout",
                format!(
                    "{} is not supported: tinyllm's engine has no dropout (the tutorial trains with 0.0)",
                    m.dropout
                ),
            );
        }

        let t = &self.train;
        for (key, value) in [
            ("train.batch_size", t.batch_size),
            ("train.seq_len", t.seq_len),
            ("train.grad_accum_steps", t.grad_accum_steps),
            ("train.max_iters", t.max_iters),
            ("train.eval_interval", t.eval_interval),
            ("train.checkpoint_interval", t.checkpoint_interval),
            ("train.log_interval", t.log_interval),
        ] {
            if value == 0 {
                return fail(key, "must be positive".into());
            }
        }
        if t.seq_len > dims.max_seq_len {
            return fail(
                "train.seq_len",
                format!(
                    "{} is above model.max_seq_len {}",
                    t.seq_len, dims.max_seq_len
                ),
            );
        }
        if t.device == Device::Cpu {
            training_fits(
                &dims,
                m.tie_embeddings,
                t.batch_size,
                t.seq_len,
                t.optimizer,
                t.grad_accum_steps * crate::collective::world().size() > 1,
            )?;
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return fail("train.lr", format!("{} must be positive", t.lr));
        }
        let min_lr = t.min_lr.resolve(t.lr);
        if !(min_lr >= 0.0 && min_lr <= t.lr) {
            return fail(
                "train.min_lr",
                format!("{min_lr} must be in [0, lr = {}]", t.lr),
            );
        }
        if !(t.decay_fraction > 0.0 && t.decay_fraction <= 1.0) {
            return fail(
                "train.decay_fraction",
                format!("{} must be in (0, 1]", t.decay_fraction),
            );
        }
        if t.weight_decay.is_nan() || t.weight_decay < 0.0 {
            return fail(
                "train.weight_decay",
                format!("{} must not be negative", t.weight_decay),
            );
        }
        if !(t.muon_lr > 0.0 && t.muon_lr.is_finite()) {
            return fail("train.muon_lr", format!("{} must be positive", t.muon_lr));
        }
        if !(0.0..1.0).contains(&t.muon_momentum) {
            return fail(
                "train.muon_momentum",
                format!("{} must be in [0, 1)", t.muon_momentum),
            );
        }
        if !(t.muon_weight_decay >= 0.0 && t.muon_weight_decay.is_finite()) {
            return fail(
                "train.muon_weight_decay",
                format!("{} must not be negative", t.muon_weight_decay),
            );
        }
        for (key, beta) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return fail(key, format!("{beta} must be in [0, 1)"));
            }
        }
        if t.grad_clip.is_nan() || t.grad_clip < 0.0 {
            return fail(
                "train.grad_clip",
                format!("{} must not be negative", t.grad_clip),
            );
        }

        let s = &self.sample;
        if s.prompts.is_empty() {
            return fail("sample.prompts", "must list at least one prompt".into());
        }
        if s.max_new_tokens == 0 || s.num_samples == 0 {
            let key = if s.num_samples == 0 {
                "sample.num_samples"
            } else {
                "sample.max_new_tokens"
            };
            return fail(key, "must be positive".into());
        }
        let samples = s.prompts.len().saturating_mul(s.num_samples);
        if samples > MAX_SAMPLES {
            return fail(
                "sample.num_samples",
                format!(
                    "{} prompts × {} samples is {samples} stories, more than the {MAX_SAMPLES} the sample stage writes; use `tinyllm sample` for more",
                    s.prompts.len(),
                    s.num_samples
                ),
            );
        }
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return fail(
                "sample.temperature",
                format!("{} must not be negative", s.temperature),
            );
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return fail("sample.top_p", format!("{} must be in (0, 1]", s.top_p));
        }
        for (key, values) in &self.sweep {
            if values.is_empty() {
                return fail(
                    &format!("sweep.{key}"),
                    "must list at least one value".into(),
                );
            }
        }
        Ok(())
    }

    /// The model dimensions the spec resolves to.
    pub fn model_dims(&self) -> Result<ModelDims, Violation> {
        self.model
            .resolve(self.train_vocab.vocab_size)
            .map_err(|(key, message)| Violation { key, message })
    }
}

/// Refuses, before any stage runs, a model and batch whose training cannot fit in the machine's
/// memory (the allocator would not refuse it: the kernel would kill the run part-way), charged
/// to the setting that can make it fit: the batch when a batch of one would, else the model.
fn training_fits(
    dims: &ModelDims,
    tie_embeddings: bool,
    batch: usize,
    seq: usize,
    optimizer: OptimizerKind,
    summed_gradients: bool,
) -> Result<(), Violation> {
    let footprint = |batch| {
        Footprint::training(
            dims,
            tie_embeddings,
            batch,
            seq,
            optimizer,
            summed_gradients,
        )
    };
    let Err(too_large) = footprint(batch).check("training") else {
        return Ok(());
    };
    let (key, what) = if batch > 1 && footprint(1).total() <= too_large.limit.bytes {
        ("train.batch_size", Allocation::Activations { batch, seq })
    } else {
        let one_layer = ModelDims {
            n_layers: 1,
            ..*dims
        };
        let layers = dims.num_params(tie_embeddings) - one_layer.num_params(tie_embeddings);
        let key = if layers >= one_layer.num_params(tie_embeddings) {
            "model.n_layers"
        } else {
            "model.dim"
        };
        (key, Allocation::Parameters { params: 0 })
    };
    Err(Violation {
        key: key.to_string(),
        message: format!("{too_large}; {}", what.remedy()),
    })
}

/// What is wrong with a mirror that can never work: a scheme tinyllm does not fetch, or a local
/// path that is neither a file nor a folder (reading a device or a FIFO would never end). A
/// local path that does not exist yet is left to the download stage, which tries the next mirror.
fn mirror_problem(mirror: &str) -> Option<String> {
    use super::{MIRROR_SCHEMES, local_mirror_path};
    if let Some((scheme, _)) = mirror.split_once("://")
        && !MIRROR_SCHEMES.iter().any(|s| mirror.starts_with(s))
    {
        return Some(format!(
            "{scheme}:// is not a scheme tinyllm can fetch; use {} or a local path",
            MIRROR_SCHEMES.join(", ")
        ));
    }
    let path = local_mirror_path(mirror)?;
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_file() || kind.is_dir() {
        return None;
    }
    Some(format!(
        "{} is {}, not a file or a folder",
        path.display(),
        crate::fsutil::kind_name(&kind)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> PipelineSpec {
        toml::from_str(&format!("[pipeline]\nname = \"t\"\n{toml}")).unwrap()
    }

    #[test]
    fn broken_model_rules_name_the_model_key() {
        let head_too_large = spec("[model]\ndim = 1040\nn_heads = 1\nn_kv_heads = 1\n");
        let violation = head_too_large.validate().unwrap_err();
        assert_eq!(violation.key, "model.dim");
        assert!(violation.message.contains("at most 512"), "{violation:?}");

        let violation = spec("[model]\nn_heads = 5\n").validate().unwrap_err();
        assert_eq!(violation.key, "model.n_heads");
        let violation = spec("[model]\nvocab_size = 70000\n")
            .validate()
            .unwrap_err();
        assert_eq!(violation.key, "model.vocab_size");
        assert!(spec("").validate().is_ok());
    }

    #[test]
    fn muon_settings_out_of_range_name_their_key() {
        for (toml, key) in [
            ("muon_lr = 0.0", "train.muon_lr"),
            ("muon_lr = inf", "train.muon_lr"),
            ("muon_momentum = 1.0", "train.muon_momentum"),
            ("muon_momentum = -0.1", "train.muon_momentum"),
            ("muon_weight_decay = -1.0", "train.muon_weight_decay"),
            ("muon_weight_decay = nan", "train.muon_weight_decay"),
        ] {
            let violation = spec(&format!("[train]\noptimizer = \"muon\"\n{toml}\n"))
                .validate()
                .unwrap_err();
            assert_eq!(violation.key, key, "{toml}");
        }
        assert!(spec("[train]\noptimizer = \"muon\"\n").validate().is_ok());
        let unknown = toml::from_str::<PipelineSpec>(
            "[pipeline]\nname = \"t\"\n[train]\noptimizer = \"sgd\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("optimizer") && unknown.contains("sgd"),
            "{unknown}"
        );
    }

    #[test]
    fn training_beyond_any_machine_is_charged_to_the_setting_that_takes_most() {
        let deep = spec("[model]\ndim = 4096\nn_heads = 32\nn_kv_heads = 32\nn_layers = 1000\n");
        let violation = deep.validate().unwrap_err();
        assert_eq!(violation.key, "model.n_layers");
        assert!(
            violation.message.starts_with("training needs about "),
            "{violation:?}"
        );
        assert!(
            violation.message.ends_with(
                "; choose a smaller model (model.dim, model.n_layers, model.vocab_size)"
            ),
            "{violation:?}"
        );
        let wide_batch = spec("[train]\nbatch_size = 100000000\n");
        let violation = wide_batch.validate().unwrap_err();
        assert_eq!(violation.key, "train.batch_size");
        assert!(
            violation
                .message
                .contains("for the activations of batch 100000000 × seq 256"),
            "{violation:?}"
        );
        // On a GPU the activations are the device's to refuse.
        let on_gpu = spec("[train]\nbatch_size = 100000000\ndevice = \"cuda\"\n");
        assert!(on_gpu.validate().is_ok());
    }
}
