//! The stages of a pipeline and the artifacts each one reads (the part of the spec that keys
//! each one is its view, in [`super::view`]).

use std::fmt;

/// The five stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageId {
    Download,
    TrainVocab,
    Pretokenize,
    Train,
    Sample,
}

impl StageId {
    pub const ALL: [StageId; 5] = [
        StageId::Download,
        StageId::TrainVocab,
        StageId::Pretokenize,
        StageId::Train,
        StageId::Sample,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageId::Download => "download",
            StageId::TrainVocab => "train_vocab",
            StageId::Pretokenize => "pretokenize",
            StageId::Train => "train",
            StageId::Sample => "sample",
        }
    }

    pub fn from_name(name: &str) -> Option<StageId> {
        StageId::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stages whose artifacts this one reads.
    pub fn inputs(self) -> &'static [StageId] {
        match self {
            StageId::Download => &[],
            StageId::TrainVocab => &[StageId::Download],
            StageId::Pretokenize => &[StageId::Download, StageId::TrainVocab],
            StageId::Train => &[StageId::TrainVocab, StageId::Pretokenize],
            StageId::Sample => &[StageId::TrainVocab, StageId::Train],
        }
    }

    /// Whether `self` reads, directly or through other stages, the artifact of `upstream`.
    ///
    /// ```
    /// use tinyllm::pipeline::StageId;
    /// assert!(StageId::Sample.depends_on(StageId::Download));
    /// assert!(!StageId::TrainVocab.depends_on(StageId::Pretokenize));
    /// ```
    pub fn depends_on(self, upstream: StageId) -> bool {
        self.inputs()
            .iter()
            .any(|&input| input == upstream || input.depends_on(upstream))
    }

    /// The version of the stage's output format and algorithm. Bump it when the same inputs and
    /// config would give a different artifact: every cached artifact of the stage is then stale.
    pub fn version(self) -> u32 {
        match self {
            StageId::Download => 1,
            // 2: the alphabet fits vocab_size; over-long stories are cut into pieces.
            StageId::TrainVocab => 2,
            // 2: shards are named by index and stem; shards.json names each one's source.
            StageId::Pretokenize => 2,
            // 2: later epochs cut the token shards at other offsets.
            // 3: bf16 keeps activations in bf16; attention's backward reads them in its own
            // working space (f32 sums may come in another order).
            StageId::Train => 3,
            StageId::Sample => 1,
        }
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_transitive() {
        assert!(StageId::Sample.depends_on(StageId::Download));
        assert!(StageId::Train.depends_on(StageId::TrainVocab));
        assert!(!StageId::TrainVocab.depends_on(StageId::Train));
        assert!(!StageId::Download.depends_on(StageId::Download));
    }

    #[test]
    fn names_round_trip() {
        for stage in StageId::ALL {
            assert_eq!(StageId::from_name(stage.name()), Some(stage));
        }
    }
}
