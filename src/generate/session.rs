//! The sampling loop that `tinyllm sample` and the sample stage share: load a model folder on a
//! device once, then continue prompt after prompt with one KV-cache decoder, reporting each piece
//! of text and each finished story to a [`SampleSink`] that decides how to show them.

use std::io;
use std::ops::ControlFlow;

use super::folder::ModelFolder;
use super::{GenerateError, GenerateOptions, Generation, generate_ids, prompt_ids};
use crate::engine::{Backend, Device, DeviceInfo, Precision};
use crate::model::safetensors::SafetensorsError;
use crate::model::{DispatchError, ModelError, ModelJob, Shape, run_model};

/// One prompt to continue, with its own options (the sample stage gives each sample its seed).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub options: GenerateOptions,
}

/// Where a sampling session's text goes as it is written.
pub trait SampleSink {
    /// Before a prompt is continued.
    fn start(&mut self, prompt: &Prompt) -> io::Result<()>;
    /// A new piece of the continuation, as soon as it is whole UTF-8.
    fn piece(&mut self, piece: &str) -> io::Result<()>;
    /// After the continuation ended (see [`Generation::stop`]).
    fn finish(&mut self, prompt: &Prompt, generation: &Generation) -> io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Loads `folder`'s model on `device` in `precision` and continues each prompt in turn (prompts
/// are drawn one at a time, so they can come from a terminal as the user types them).
pub fn sample_folder<I>(
    folder: &ModelFolder,
    device: Device,
    precision: Precision,
    prompts: I,
    sink: &mut dyn SampleSink,
) -> Result<(), SampleError>
where
    I: IntoIterator<Item = Result<Prompt, SampleError>>,
{
    run_model(
        device,
        folder.dims(),
        Session {
            folder,
            precision,
            prompts,
            sink,
        },
    )
}

struct Session<'a, I> {
    folder: &'a ModelFolder,
    precision: Precision,
    prompts: I,
    sink: &'a mut dyn SampleSink,
}

impl<I> ModelJob for Session<'_, I>
where
    I: IntoIterator<Item = Result<Prompt, SampleError>>,
{
    type Output = Result<(), SampleError>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        _device: &DeviceInfo,
    ) -> Self::Output {
        let mut model = self.folder.load(shape, backend)?;
        model.set_precision(self.precision)?;
        // Grown by each generation to what it needs.
        let mut decoder = model.decoder(1)?;
        let context = model.dims().max_seq_len;
        for prompt in self.prompts {
            let prompt = prompt?;
            // Refused before anything of it is shown.
            let ids = prompt_ids(&self.folder.tokenizer, &prompt.text, context)?;
            self.sink.start(&prompt)?;
            let mut failed = None;
            let generation = generate_ids(
                &model,
                &mut decoder,
                &self.folder.tokenizer,
                ids,
                &prompt.options,
                |piece| match self.sink.piece(piece) {
                    Ok(()) => ControlFlow::Continue(()),
                    // Nothing more can be shown; the error ends the session below.
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                },
            )?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            self.sink.finish(&prompt, &generation)?;
        }
        Ok(())
    }
}
