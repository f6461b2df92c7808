//! Model shapes at the type level. Each named preset is a zero-sized type whose dimensions are
//! associated constants, so a model or parameter set of one preset cannot be handed to another
//! (the compiler refuses), and the loop bounds are constants. [`RuntimeShape`] serves custom
//! sizes read from a spec, checked once when it is made.

use super::{ModelDims, Preset};

/// What a model needs to know of its shape.
pub trait Shape: Copy + Send + Sync + 'static {
    fn dims(&self) -> ModelDims;
}

/// A shape fixed at compile time.
pub trait Dims: Copy + Default + Send + Sync + 'static {
    const DIM: usize;
    const N_LAYERS: usize;
    const N_HEADS: usize;
    const N_KV_HEADS: usize;
    const VOCAB_SIZE: usize;
    const MULTIPLE_OF: usize;
    const MAX_SEQ_LEN: usize;
    const PRESET: Preset;
}

impl<D: Dims> Shape for D {
    #[inline]
    fn dims(&self) -> ModelDims {
        ModelDims {
            dim: D::DIM,
            n_layers: D::N_LAYERS,
            n_heads: D::N_HEADS,
            n_kv_heads: D::N_KV_HEADS,
            vocab_size: D::VOCAB_SIZE,
            multiple_of: D::MULTIPLE_OF,
            max_seq_len: D::MAX_SEQ_LEN,
        }
    }
}

macro_rules! preset_type {
    ($(#[$doc:meta])* $name:ident = $preset:ident: $dim:expr, $layers:expr, $heads:expr, $kv:expr, $vocab:expr, $multiple:expr, $seq:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl Dims for $name {
            const DIM: usize = $dim;
            const N_LAYERS: usize = $layers;
            const N_HEADS: usize = $heads;
            const N_KV_HEADS: usize = $kv;
            const VOCAB_SIZE: usize = $vocab;
            const MULTIPLE_OF: usize = $multiple;
            const MAX_SEQ_LEN: usize = $seq;
            const PRESET: Preset = Preset::$preset;
        }

        const _: () = {
            assert!($dim % $heads == 0 && $heads % $kv == 0 && ($dim / $heads) % 2 == 0);
        };
    };
}

preset_type!(
    /// The tutorial's model: dim 288, 8 layers, 8 heads, 4 kv heads, vocab 4096, seq 256.
    Tutorial = Tutorial: 288, 8, 8, 4, 4096, 32, 256
);
preset_type!(
    /// llama2.c's `stories260K`.
    Stories260K = Stories260K: 64, 5, 8, 4, 512, 4, 512
);
preset_type!(
    /// llama2.c's `stories15M`.
    Stories15M = Stories15M: 288, 6, 6, 6, 32000, 32, 256
);
preset_type!(
    /// llama2.c's `stories42M`.
    Stories42M = Stories42M: 512, 8, 8, 8, 32000, 32, 1024
);
preset_type!(
    /// llama2.c's `stories110M`.
    Stories110M = Stories110M: 768, 12, 12, 12, 32000, 32, 1024
);
preset_type!(
    /// The quickstart's model (`pipelines/quickstart.toml`).
    Quickstart = Quickstart: 128, 4, 4, 2, 2048, 32, 256
);

/// A shape chosen at run time (a spec's custom dimensions), valid by construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuntimeShape(ModelDims);

/// Why a set of dimensions cannot make a model: the rule of [`ModelDims::check`] they break.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid model shape: {0}")]
pub struct ShapeError(#[from] pub super::DimsError);

impl RuntimeShape {
    pub fn new(dims: ModelDims) -> Result<RuntimeShape, ShapeError> {
        dims.check()?;
        Ok(RuntimeShape(dims))
    }
}

/// Runs `$body` with `$shape` bound to the compile-time type of the preset whose dimensions
/// are `$dims`, or to a checked [`RuntimeShape`] for custom dimensions, so that the named
/// presets get constant loop bounds. `?` on the [`ShapeError`] needs the enclosing function's
/// error type to convert from it.
#[macro_export]
macro_rules! with_shape {
    ($dims:expr, |$shape:ident| $body:expr) => {{
        use $crate::model::Preset as __Preset;
        use $crate::model::shape as __shape;
        let dims: $crate::model::ModelDims = $dims;
        match __Preset::ALL.into_iter().find(|p| p.dims() == dims) {
            Some(__Preset::Tutorial) => {
                let $shape = __shape::Tutorial;
                $body
            }
            Some(__Preset::Stories260K) => {
                let $shape = __shape::Stories260K;
                $body
            }
            Some(__Preset::Stories15M) => {
                let $shape = __shape::Stories15M;
                $body
            }
            Some(__Preset::Stories42M) => {
                let $shape = __shape::Stories42M;
                $body
            }
            Some(__Preset::Stories110M) => {
                let $shape = __shape::Stories110M;
                $body
            }
            Some(__Preset::Quickstart) => {
                let $shape = __shape::Quickstart;
                $body
            }
            None => {
                let $shape = __shape::RuntimeShape::new(dims)?;
                $body
            }
        }
    }};
}

impl Shape for RuntimeShape {
    fn dims(&self) -> ModelDims {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_types_agree_with_the_preset_table() {
        fn check<D: Dims>() {
            assert_eq!(D::default().dims(), D::PRESET.dims());
        }
        check::<Tutorial>();
        check::<Stories260K>();
        check::<Stories15M>();
        check::<Stories42M>();
        check::<Stories110M>();
        check::<Quickstart>();
    }

    #[test]
    fn invalid_runtime_shapes_are_errors() {
        let good = Preset::Tutorial.dims();
        assert!(RuntimeShape::new(good).is_ok());
        for (bad, words) in [
            (ModelDims { n_heads: 5, ..good }, "does not divide dim"),
            (
                ModelDims {
                    n_kv_heads: 3,
                    ..good
                },
                "does not divide n_heads",
            ),
            (
                ModelDims {
                    n_layers: 0,
                    ..good
                },
                "n_layers must be positive",
            ),
            (
                ModelDims {
                    vocab_size: 70_000,
                    ..good
                },
                "above 65535",
            ),
            (
                ModelDims {
                    dim: 18,
                    n_heads: 2,
                    n_kv_heads: 1,
                    ..good
                },
                "must be even",
            ),
        ] {
            let err = RuntimeShape::new(bad).unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
    }
}
