//! The model side of the server: the model is loaded once on its device, and `parallel` worker
//! threads, each with its own KV-cache decoder, share it and take completions from one bounded
//! queue. A completion carries the channel its text goes back on; a worker gives up a completion
//! whose reader is gone (the client left) at the next piece of text, and skips one whose client
//! left while it waited.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::stop::StopScanner;
use crate::engine::{Backend, DeviceInfo, Precision};
use crate::generate::folder::ModelFolder;
use crate::generate::{GenerateOptions, SampleError, Stop, generate_ids};
use crate::model::{Decoder, Llama, ModelJob, Shape};
use crate::tokenizer::Tokenizer;

/// One completion to generate.
pub struct Job {
    /// For the log.
    pub id: String,
    /// The prompt's token ids, BOS first, already checked against the context.
    pub ids: Vec<u32>,
    pub options: GenerateOptions,
    pub stops: Vec<String>,
    pub events: UnboundedSender<Event>,
}

/// What a worker sends back about a completion: its text, piece by piece, then how it ended.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finish),
    /// The model failed (a device error); the message is for the client.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The end of the story, or a stop string.
    Stop,
    /// `max_tokens`, or the model's context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the health route reports; each count is kept by whoever changes it.
#[derive(Debug, Default)]
pub struct Load {
    /// Completions queued or being generated: what admission counts against the capacity.
    admitted: AtomicUsize,
    pub queued: AtomicUsize,
    pub busy: AtomicUsize,
    pub completed: AtomicU64,
    /// Completions given up because their client left (running or still queued).
    pub cancelled: AtomicU64,
}

/// The sending end of the queue, shared by the request handlers. Closing it (at shutdown) lets
/// the workers finish what is queued and stop.
///
/// A completion is admitted while fewer than `parallel + waiting` are queued or running, so
/// with `waiting` 0 one is refused exactly when every worker is busy (a bounded channel would
/// also refuse one that comes while an idle worker is between two completions).
pub struct Queue {
    sender: Mutex<Option<Sender<Job>>>,
    capacity: usize,
    pub load: Load,
}

/// Why a completion was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    ShuttingDown,
}

impl Queue {
    /// A queue for `parallel` workers where at most `waiting` completions wait for one, and
    /// the receiving end for [`EngineJob`].
    pub fn bounded(parallel: usize, waiting: usize) -> (Queue, Receiver<Job>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let queue = Queue {
            sender: Mutex::new(Some(sender)),
            capacity: parallel.saturating_add(waiting),
            load: Load::default(),
        };
        (queue, receiver)
    }

    /// Queues `job` if there is room, without waiting.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return Err(Refused::ShuttingDown);
        };
        let load = &self.load;
        load.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| Refused::Full)?;
        // Counted before it can be taken, so a worker never counts it off first.
        load.queued.fetch_add(1, Ordering::SeqCst);
        sender.send(job).map_err(|_| {
            load.queued.fetch_sub(1, Ordering::SeqCst);
            load.admitted.fetch_sub(1, Ordering::SeqCst);
            Refused::ShuttingDown
        })
    }

    /// Refuses new completions; the workers stop once the queue is empty.
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Loads the model and serves the queue with `parallel` workers until it is closed. `ready` is
/// sent once the model is loaded, so the server only says it is listening when it can answer.
pub struct EngineJob<'a> {
    pub folder: &'a ModelFolder,
    pub precision: Precision,
    pub parallel: usize,
    pub jobs: Receiver<Job>,
    pub load: &'a Load,
    pub ready: std::sync::mpsc::Sender<()>,
}

impl ModelJob for EngineJob<'_> {
    type Output = Result<(), SampleError>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        _device: &DeviceInfo,
    ) -> Self::Output {
        let mut model = self.folder.load(shape, backend)?;
        model.set_precision(self.precision)?;
        let jobs = Mutex::new(self.jobs);
        let _ = self.ready.send(());
        std::thread::scope(|scope| {
            for _ in 0..self.parallel {
                scope.spawn(|| worker(&model, &self.folder.tokenizer, &jobs, self.load));
            }
        });
        Ok(())
    }
}

/// Takes completions one at a time until the queue is closed and empty.
fn worker<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    tokenizer: &Tokenizer,
    jobs: &Mutex<Receiver<Job>>,
    load: &Load,
) {
    // Made by the first completion and grown by those that need more positions.
    let mut decoder = None;
    loop {
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        load.queued.fetch_sub(1, Ordering::SeqCst);
        let cancelled = if job.events.is_closed() {
            eprintln!("{}: skipped, its client left while it was queued", job.id);
            true
        } else {
            load.busy.fetch_add(1, Ordering::SeqCst);
            let cancelled = complete(model, tokenizer, &mut decoder, job);
            load.busy.fetch_sub(1, Ordering::SeqCst);
            cancelled
        };
        let count = if cancelled {
            &load.cancelled
        } else {
            &load.completed
        };
        count.fetch_add(1, Ordering::SeqCst);
        load.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Generates one completion, sending its text as it is written; true when its client left.
fn complete<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    tokenizer: &Tokenizer,
    decoder: &mut Option<Decoder<B>>,
    job: Job,
) -> bool {
    let decoder = match decoder {
        Some(decoder) => decoder,
        None => match model.decoder(1) {
            Ok(made) => decoder.insert(made),
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return false;
            }
        },
    };
    let started = Instant::now();
    let prompt_tokens = job.ids.len();
    let mut scanner = StopScanner::new(&job.stops);
    let mut client_left = false;
    let mut stop_string = false;
    let generation = generate_ids(model, decoder, tokenizer, job.ids, &job.options, |piece| {
        if job.events.is_closed() {
            client_left = true;
            return ControlFlow::Break(());
        }
        let (text, hit) = scanner.push(piece);
        if !text.is_empty() {
            let _ = job.events.send(Event::Text(text));
        }
        if hit {
            stop_string = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    let generation = match generation {
        Ok(generation) => generation,
        Err(e) => {
            eprintln!("{}: failed: {e}", job.id);
            let _ = job.events.send(Event::Failed(e.to_string()));
            return false;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let completion_tokens = generation.tokens.len();
    if client_left {
        eprintln!(
            "{}: cancelled after {completion_tokens} tokens, its client left",
            job.id
        );
        return true;
    }
    if !stop_string {
        let rest = scanner.finish();
        if !rest.is_empty() {
            let _ = job.events.send(Event::Text(rest));
        }
    }
    let reason = match generation.stop {
        Stop::EndOfStory | Stop::Interrupted => FinishReason::Stop,
        Stop::MaxNewTokens | Stop::ContextFull => FinishReason::Length,
    };
    eprintln!(
        "{}: {prompt_tokens} prompt + {completion_tokens} new tokens in {secs:.2} s ({:.0} tokens/s), finish_reason {}",
        job.id,
        completion_tokens as f64 / secs.max(1e-9),
        reason.as_str()
    );
    let _ = job.events.send(Event::Done(Finish {
        reason,
        prompt_tokens,
        completion_tokens,
    }));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "cmpl-test".into(),
            ids: vec![1],
            options: GenerateOptions {
                sampling: crate::generate::Sampling {
                    temperature: 1.0,
                    top_k: 0,
                    top_p: 1.0,
                },
                max_new_tokens: 1,
                seed: 1,
                ignore_end_of_story: false,
            },
            stops: Vec::new(),
            events: tokio::sync::mpsc::unbounded_channel().0,
        }
    }

    #[test]
    fn a_queue_admits_a_completion_per_worker_and_per_waiting_place() {
        for (parallel, waiting) in [(1, 0), (1, 1), (3, 2)] {
            let (queue, _jobs) = Queue::bounded(parallel, waiting);
            for _ in 0..parallel + waiting {
                assert_eq!(queue.submit(job()), Ok(()));
            }
            assert_eq!(queue.submit(job()), Err(Refused::Full));
            assert_eq!(queue.load.queued.load(Ordering::SeqCst), parallel + waiting);
            queue.close();
            assert_eq!(queue.submit(job()), Err(Refused::ShuttingDown));
        }
    }
}
