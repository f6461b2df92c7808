//! Model shapes at the type level.
//!
//! What the types guarantee:
//! - Each named preset ([`Tutorial`], [`Stories15M`], …) is a zero-sized type whose dimensions
//!   are the associated constant [`Dims::DIMS`]. A [`Llama`](super::Llama) and its
//!   [`Params`](super::Params) carry their shape type, so the parameters or gradients of one
//!   preset cannot be handed to a model of another: the compiler refuses (tested with trybuild in
//!   `tests/compile_fail/`). For a preset, every loop bound derived from the dimensions is a
//!   constant the compiler sees.
//! - Custom dimensions are a [`RuntimeShape`], which can only be made through
//!   [`RuntimeShape::new`], so it always holds dimensions that passed the model's rule set.
//!
//! What they do not guarantee: batch and sequence length are run-time values, checked when a
//! model is called (`ModelError`), and two `RuntimeShape` models of different sizes share a type.
//!
//! The preset table is written once, here: [`Preset::dims`](super::Preset::dims) reads it from
//! the types. [`with_shape`] is the one place a [`ModelDims`] value becomes a typed shape.

use super::{ModelDims, Preset};

/// What a model needs to know of its shape.
pub trait Shape: Copy + Send + Sync + 'static {
    fn dims(&self) -> ModelDims;
}

/// A shape fixed at compile time: one zero-sized type per preset.
pub trait Dims: Copy + Default + Send + Sync + 'static {
    const DIMS: ModelDims;
    const PRESET: Preset;
}

impl<D: Dims> Shape for D {
    #[inline]
    fn dims(&self) -> ModelDims {
        D::DIMS
    }
}

macro_rules! preset_type {
    ($(#[$doc:meta])* $name:ident: $dim:expr, $layers:expr, $heads:expr, $kv:expr, $vocab:expr, $multiple:expr, $seq:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl Dims for $name {
            const DIMS: ModelDims = ModelDims {
                dim: $dim,
                n_layers: $layers,
                n_heads: $heads,
                n_kv_heads: $kv,
                vocab_size: $vocab,
                multiple_of: $multiple,
                max_seq_len: $seq,
            };
            const PRESET: Preset = Preset::$name;
        }

        const _: () = {
            assert!($dim % $heads == 0 && $heads % $kv == 0 && ($dim / $heads) % 2 == 0);
        };
    };
}

// The preset table: dim, layers, heads, kv heads, vocab, multiple_of, max_seq_len.
preset_type!(
    /// The tutorial's model: dim 288, 8 layers, 8 heads, 4 kv heads, vocab 4096, seq 256.
    Tutorial: 288, 8, 8, 4, 4096, 32, 256
);
preset_type!(
    /// llama2.c's `stories260K`.
    Stories260K: 64, 5, 8, 4, 512, 4, 512
);
preset_type!(
    /// llama2.c's `stories15M`.
    Stories15M: 288, 6, 6, 6, 32000, 32, 256
);
preset_type!(
    /// llama2.c's `stories42M`.
    Stories42M: 512, 8, 8, 8, 32000, 32, 1024
);
preset_type!(
    /// llama2.c's `stories110M`.
    Stories110M: 768, 12, 12, 12, 32000, 32, 1024
);
preset_type!(
    /// The quickstart's model (`pipelines/quickstart.toml`).
    Quickstart: 128, 4, 4, 2, 2048, 32, 256
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

/// Work that needs a model's shape as a type: [`with_shape`] calls `run` with the preset's
/// zero-sized type, or with a [`RuntimeShape`] for custom dimensions.
pub trait ShapeJob {
    type Output;
    fn run<S: Shape>(self, shape: S) -> Self::Output;
}

/// Runs `job` with the compile-time type of the preset whose dimensions are `dims`, so that the
/// presets get constant loop bounds, or with a checked [`RuntimeShape`] for custom dimensions.
pub fn with_shape<J: ShapeJob>(dims: ModelDims, job: J) -> Result<J::Output, ShapeError> {
    Ok(match Preset::ALL.into_iter().find(|p| p.dims() == dims) {
        Some(Preset::Tutorial) => job.run(Tutorial),
        Some(Preset::Stories260K) => job.run(Stories260K),
        Some(Preset::Stories15M) => job.run(Stories15M),
        Some(Preset::Stories42M) => job.run(Stories42M),
        Some(Preset::Stories110M) => job.run(Stories110M),
        Some(Preset::Quickstart) => job.run(Quickstart),
        None => job.run(RuntimeShape::new(dims)?),
    })
}

impl Shape for RuntimeShape {
    fn dims(&self) -> ModelDims {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names the shape type a job was given.
    struct TypeName;
    impl ShapeJob for TypeName {
        type Output = (&'static str, ModelDims);
        fn run<S: Shape>(self, shape: S) -> Self::Output {
            let name = std::any::type_name::<S>();
            (name.rsplit("::").next().unwrap_or(name), shape.dims())
        }
    }

    #[test]
    fn each_preset_runs_as_its_own_type_and_custom_dims_at_run_time() {
        fn preset_of<D: Dims>(_: D) -> Preset {
            D::PRESET
        }
        assert_eq!(preset_of(Stories110M), Preset::Stories110M);
        for preset in Preset::ALL {
            let (name, dims) = with_shape(preset.dims(), TypeName).unwrap();
            assert_eq!(dims, preset.dims());
            let expected = format!("{:?}", preset);
            assert_eq!(name, expected, "{preset:?}");
        }
        let custom = ModelDims {
            n_layers: 3,
            ..Preset::Tutorial.dims()
        };
        assert_eq!(
            with_shape(custom, TypeName).unwrap(),
            ("RuntimeShape", custom)
        );
        let bad = ModelDims {
            n_heads: 5,
            ..custom
        };
        assert!(with_shape(bad, TypeName).is_err());
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
