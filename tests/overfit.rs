//! The `tutorial` model memorises one fixed batch: the whole training step (the trainer's
//! `Stepper::step`: forward, backward, clipping, AdamW) works end to end at full size. Slow in
//! debug builds: `.ci/run` runs it in release with `--ignored`.

use tinyllm::engine::{Cpu, OptimizerSettings, Rng};
use tinyllm::model::shape::Tutorial;
use tinyllm::model::{Llama, LlamaConfig};
use tinyllm::train::step::{FixedBatch, StepConfig, Stepper};

#[test]
#[ignore = "end-to-end: run by .ci/run in release mode"]
fn tutorial_preset_overfits_one_batch() {
    let (batch, seq) = (8, 64);
    let n = batch * seq;
    let mut rng = Rng::new(42);
    let stream: Vec<u32> = (0..n + 1).map(|_| rng.below(4096) as u32).collect();
    let mut batch_source = FixedBatch {
        inputs: stream[..n].to_vec(),
        targets: stream[1..].to_vec(),
    };
    let model = Llama::new(Cpu::<f32>::new(), Tutorial, LlamaConfig::default(), 1337).unwrap();
    let optimizer = model
        .optimizer(OptimizerSettings::adamw(0.9, 0.95, 0.1))
        .unwrap();
    let config = StepConfig {
        batch,
        seq,
        accum: 1,
        grad_clip: 1.0,
    };
    let mut stepper = Stepper::new(model, optimizer, config);
    let mut first = None;
    let mut last = f64::INFINITY;
    for step in 1..=200 {
        let loss = stepper.step(&mut batch_source, 1e-3).unwrap().loss;
        first.get_or_insert(loss);
        last = loss;
        if loss < 0.1 {
            eprintln!(
                "loss {loss:.4} after {step} steps (from {:.3})",
                first.unwrap()
            );
            break;
        }
    }
    assert!(
        (first.unwrap() - (4096f64).ln()).abs() < 0.5,
        "initial loss {first:?}"
    );
    assert!(last < 0.1, "loss still {last} after 200 steps");
}
