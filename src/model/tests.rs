//! Whole-model checks: the loss gradient against finite differences (f64), determinism, and
//! overfitting a batch.

use super::*;
use crate::engine::cpu::gradcheck::check_gradients;
use crate::engine::{Cpu, OptimizerSettings, Precision};

fn tiny_dims() -> ModelDims {
    ModelDims {
        dim: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 32,
        multiple_of: 4,
        max_seq_len: 8,
    }
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = crate::engine::Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

fn check_model_gradient(tie_embeddings: bool) {
    let dims = tiny_dims();
    let shape = RuntimeShape::new(dims).unwrap();
    let config = LlamaConfig {
        tie_embeddings,
        ..Default::default()
    };
    let (batch, seq) = (2, 8);
    let inputs = tokens(batch * seq, dims.vocab_size, 1);
    let targets = tokens(batch * seq, dims.vocab_size, 2);
    // Larger weights than the 0.02 init, so every path carries a visible gradient.
    let mut model = Llama::new(Cpu::<f64>::new(), shape, config, 3).unwrap();
    let mut rng = crate::engine::Rng::new(4);
    let larger: Vec<Vec<f64>> = model
        .layout()
        .iter()
        .map(|info| {
            (0..info.numel())
                .map(|_| {
                    if info.shape.len() == 1 {
                        1.0 + 0.3 * rng.normal()
                    } else {
                        0.4 * rng.normal()
                    }
                })
                .collect()
        })
        .collect();
    model.load_params(&larger).unwrap();
    let params = model.params().tensors().to_vec();
    assert_eq!(params, larger);
    let n = (batch * seq) as f64;
    model.zero_grad();
    model
        .forward(&inputs, Some(&targets), batch, seq, 1.0 / n)
        .unwrap();
    model.backward();
    let grads = model.grads().tensors().to_vec();
    let loss = |p: &[Vec<f64>]| {
        let mut m = Llama::with_params(
            Cpu::<f64>::new(),
            shape,
            config,
            Params::from_tensors(p.to_vec()),
        )
        .unwrap();
        m.forward(&inputs, Some(&targets), batch, seq, 1.0 / n)
            .unwrap()
            .unwrap()
    };
    check_gradients(&params, &grads, loss);
}

#[test]
fn whole_model_gradient_matches_finite_differences_tied() {
    check_model_gradient(true);
}

#[test]
fn whole_model_gradient_matches_finite_differences_untied() {
    check_model_gradient(false);
}

#[test]
fn layout_uses_hugging_face_names() {
    let layout = param_layout(&Preset::Tutorial.dims(), &LlamaConfig::default());
    assert_eq!(layout[0].name, "model.embed_tokens.weight");
    assert_eq!(layout[0].shape, vec![4096, 288]);
    assert_eq!(layout[3].name, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(layout[3].shape, vec![144, 288]);
    assert_eq!(layout[9].name, "model.layers.0.mlp.down_proj.weight");
    assert_eq!(layout[9].shape, vec![288, 768]);
    assert_eq!(layout.last().unwrap().name, "model.norm.weight");
    let total: usize = layout.iter().map(ParamInfo::numel).sum();
    // 4096·288 + 8·(2·288 + 2·288² + 2·144·288 + 3·288·768) + 288
    assert_eq!(
        total,
        4096 * 288 + 8 * (2 * 288 + 2 * 288 * 288 + 2 * 144 * 288 + 3 * 288 * 768) + 288
    );
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let shape = RuntimeShape::new(tiny_dims()).unwrap();
    let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 1).unwrap();
    assert!(matches!(
        model.forward(&[0; 18], None, 2, 9, 1.0),
        Err(ModelError::SequenceTooLong { .. })
    ));
    assert!(matches!(
        model.forward(&[0; 15], None, 2, 8, 1.0),
        Err(ModelError::TokenCount { .. })
    ));
    assert!(matches!(
        model.forward(&[40; 16], None, 2, 8, 1.0),
        Err(ModelError::TokenOutOfRange { token: 40, .. })
    ));
    let wrong = Params::from_tensors(vec![vec![0.0f32; 3]]);
    assert!(matches!(
        Llama::with_params(Cpu::<f32>::new(), shape, LlamaConfig::default(), wrong),
        Err(ModelError::ParamCount { .. })
    ));
}

/// Gradient accumulation: two micro-batches of 2 sequences, each scaled by 1/(all tokens),
/// leave the gradient of one batch of 4.
#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    let dims = tiny_dims();
    let shape = RuntimeShape::new(dims).unwrap();
    let (seq, n) = (8, 4 * 8);
    let inputs = tokens(n, dims.vocab_size, 5);
    let targets = tokens(n, dims.vocab_size, 6);
    let mut whole = Llama::new(Cpu::<f64>::new(), shape, LlamaConfig::default(), 7).unwrap();
    whole.zero_grad();
    whole
        .forward(&inputs, Some(&targets), 4, seq, 1.0 / n as f64)
        .unwrap();
    whole.backward();

    let mut parts = Llama::new(Cpu::<f64>::new(), shape, LlamaConfig::default(), 7).unwrap();
    parts.zero_grad();
    for half in [0..n / 2, n / 2..n] {
        parts
            .forward(
                &inputs[half.clone()],
                Some(&targets[half]),
                2,
                seq,
                1.0 / n as f64,
            )
            .unwrap();
        parts.backward();
    }
    for (a, b) in whole.grads().tensors().iter().zip(parts.grads().tensors()) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

/// The KV-cache decoder gives the logits of a full forward pass at every position, and greedy
/// decoding with it picks exactly the tokens a no-cache reference picks, for 200 tokens.
#[test]
fn kv_cache_decoding_matches_the_full_forward_for_200_greedy_tokens() {
    let dims = ModelDims {
        max_seq_len: 256,
        ..tiny_dims()
    };
    let shape = RuntimeShape::new(dims).unwrap();
    let config = LlamaConfig::default();
    let mut model = Llama::new(Cpu::<f64>::new(), shape, config, 21).unwrap();
    // Larger weights than the 0.02 init, so the greedy path is not a constant.
    let mut rng = crate::engine::Rng::new(22);
    let mut larger = model.state_tensors().unwrap();
    for (info, tensor) in model.layout().iter().zip(&mut larger) {
        if info.shape.len() == 2 {
            tensor.iter_mut().for_each(|x| *x = 0.5 * rng.normal());
        }
    }
    model.load_params(&larger).unwrap();
    let argmax = |row: &[f64]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32
    };
    let v = dims.vocab_size;

    let mut decoder = model.decoder(dims.max_seq_len).unwrap();
    let mut cached = vec![1u32];
    let mut logits = model.decode_step(&mut decoder, 1).unwrap();
    for _ in 0..200 {
        let next = argmax(&logits);
        cached.push(next);
        logits = model.decode_step(&mut decoder, next).unwrap();
    }

    let mut reference = vec![1u32];
    for step in 0..200 {
        let seq = reference.len();
        model.forward(&reference, None, 1, seq, 1.0).unwrap();
        let all = model.logits().unwrap().unwrap();
        if step == 0 || step == 199 {
            // The decoder's logits at this position equal the full pass's last row.
            let mut check = model.decoder(dims.max_seq_len).unwrap();
            let mut last = Vec::new();
            for &t in &reference {
                last = model.decode_step(&mut check, t).unwrap();
            }
            for (a, b) in last.iter().zip(&all[(seq - 1) * v..]) {
                assert!((a - b).abs() < 1e-10, "{a} vs {b}");
            }
        }
        reference.push(argmax(&all[(seq - 1) * v..]));
    }
    assert_eq!(cached, reference);
    assert!(
        cached
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "a continuation that moves: {cached:?}"
    );
    assert!(matches!(
        model.decode_step(&mut decoder, 99),
        Err(ModelError::TokenOutOfRange { .. })
    ));
}

/// Weights go out to the host and back unchanged, and weights of the wrong count or size are
/// refused before anything is overwritten.
#[test]
fn weights_round_trip_through_the_host_and_wrong_sizes_are_refused() {
    let shape = RuntimeShape::new(tiny_dims()).unwrap();
    let source = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 1).unwrap();
    let mut target = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 2).unwrap();
    let weights = source.state_tensors().unwrap();
    assert_ne!(target.state_tensors().unwrap(), weights);
    target.load_params(&weights).unwrap();
    assert_eq!(target.params().tensors(), source.params().tensors());

    let before = target.state_tensors().unwrap();
    let mut wrong = weights.clone();
    wrong[3].pop();
    assert!(matches!(
        target.load_params(&wrong),
        Err(ModelError::ParamSize { got, expected, .. }) if got + 1 == expected
    ));
    assert!(matches!(
        target.load_params(&weights[1..]),
        Err(ModelError::ParamCount { .. })
    ));
    assert_eq!(target.state_tensors().unwrap(), before);
}

/// The byte count an out-of-memory message gives is what the buffers hold: the formula of the
/// activations and of the decoder, against the buffers actually made.
#[test]
fn memory_figures_count_every_buffer() {
    for tie_embeddings in [true, false] {
        let dims = tiny_dims();
        let shape = RuntimeShape::new(dims).unwrap();
        let config = LlamaConfig {
            tie_embeddings,
            ..Default::default()
        };
        let cpu = Cpu::<f32>::new();
        let mut model = Llama::new(cpu, shape, config, 1).unwrap();
        for precision in [Precision::Bf16, Precision::F32] {
            model.set_precision(precision).unwrap();
            model.allocate_activations(3, 5).unwrap();
            let sizes = super::memory::ActivationSizes::on(&dims, 3, 5, &cpu, precision);
            let counts = sizes.counts(dims.n_layers);
            assert_eq!(model.activation_counts(), Some(counts));
            assert_eq!(counts.1 > 0, precision == Precision::Bf16);
        }
        // No backend and precision needs more than the estimate made before a model exists.
        let upper = super::memory::ActivationSizes::new(&dims, 3, 5).bytes::<f32>(dims.n_layers);
        for precision in [Precision::Bf16, Precision::F32] {
            let sizes = super::memory::ActivationSizes::on(&dims, 3, 5, &cpu, precision);
            assert!(sizes.bytes::<f32>(dims.n_layers) <= upper);
        }
        for positions in [1, 3, dims.max_seq_len] {
            let decoder = model.decoder(positions).unwrap();
            assert_eq!(decoder.capacity(), positions);
            assert_eq!(
                4 * decoder.floats_held(&cpu) as u64,
                super::memory::decoder_bytes(&dims, positions)
            );
        }
    }
}

/// Under bf16 the tutorial model's activations take at most 0.7x the bytes of f32's (the kept
/// q, k, v, probabilities, gate and up are bf16), what brings a bf16 step under 0.8x of f32's
/// memory.
#[test]
fn bf16_keeps_the_tutorial_models_activations_in_under_0_7x_the_bytes() {
    let dims = crate::model::Preset::Tutorial.dims();
    let cpu = Cpu::<f32>::new();
    let bytes = |precision| {
        super::memory::ActivationSizes::on(&dims, 8, 256, &cpu, precision)
            .bytes::<f32>(dims.n_layers) as f64
    };
    let ratio = bytes(Precision::Bf16) / bytes(Precision::F32);
    assert!(ratio < 0.7, "{ratio}");
}

/// A batch whose activations cannot fit in the machine's memory is one error, found before
/// anything is allocated, that says how much memory they need and which setting to lower, not
/// an abort; the model stays usable.
#[test]
fn an_impossible_batch_is_a_too_large_error_naming_the_batch_size() {
    let shape = RuntimeShape::new(tiny_dims()).unwrap();
    let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 1).unwrap();
    let limit = memory_limit().expect("the machine's memory is known on Linux");
    for batch in [1usize << 40, usize::MAX / 4] {
        let error = model.allocate_activations(batch, 8).unwrap_err();
        let ModelError::TooLarge(too_large) = &error else {
            panic!("expected a refusal, got {error:?}");
        };
        assert_eq!(
            too_large.footprint.largest(),
            Allocation::Activations { batch, seq: 8 }
        );
        assert!(too_large.footprint.total() > limit.bytes);
        let message = error.to_string();
        assert!(message.starts_with("this pass needs about "), "{message}");
        assert!(
            message.contains(&format!(" for the activations of batch {batch} × seq 8")),
            "{message}"
        );
        assert!(
            message.ends_with(&format!(
                "more than {limit}; lower train.batch_size (or train.seq_len)"
            )),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
    // The model is still usable.
    model.forward(&[0; 16], None, 2, 8, 1.0).unwrap();
    assert_eq!(model.logits().unwrap().unwrap().len(), 16 * 32);
}

/// `forward` on a batch whose activations cannot fit (here through the attention
/// probabilities, batch × heads × seq², of a model with a 1M-token context) returns the
/// model's refusal, which names the setting to lower.
#[test]
fn forward_on_an_impossible_batch_returns_the_refusal() {
    let seq = 1 << 20;
    let dims = ModelDims {
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: 16,
        multiple_of: 4,
        max_seq_len: seq,
    };
    let shape = RuntimeShape::new(dims).unwrap();
    let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 1).unwrap();
    let inputs = vec![1u32; 2 * seq];
    let error = model.forward(&inputs, None, 2, seq, 1.0).unwrap_err();
    assert!(
        matches!(
            &error,
            ModelError::TooLarge(t)
                if t.footprint.largest() == Allocation::Activations { batch: 2, seq }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("lower train.batch_size"), "{message}");
    assert!(
        message.contains("for the activations of batch 2 × seq 1048576"),
        "{message}"
    );
}

/// A tiny f32 model with weights of a visible scale, and a batch for it.
fn tiny_f32_model(seed: u64) -> (Llama<RuntimeShape, Cpu<f32>>, Vec<u32>, Vec<u32>) {
    let dims = tiny_dims();
    let shape = RuntimeShape::new(dims).unwrap();
    let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), seed).unwrap();
    let mut rng = crate::engine::Rng::new(seed + 1);
    let weights: Vec<Vec<f32>> = model
        .layout()
        .iter()
        .map(|info| {
            (0..info.numel())
                .map(|_| {
                    let scale = if info.shape.len() == 1 { 0.1 } else { 0.3 };
                    (f64::from(u8::from(info.shape.len() == 1)) + scale * rng.normal()) as f32
                })
                .collect()
        })
        .collect();
    model.load_params(&weights).unwrap();
    let n = 2 * 8;
    (
        model,
        tokens(n, dims.vocab_size, seed + 2),
        tokens(n, dims.vocab_size, seed + 3),
    )
}

/// The logits and the gradients of one forward and backward pass.
fn pass(
    model: &mut Llama<RuntimeShape, Cpu<f32>>,
    inputs: &[u32],
    targets: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    model.zero_grad();
    model.forward(inputs, None, 2, 8, 1.0).unwrap();
    let logits = model.logits().unwrap().unwrap();
    model
        .forward(inputs, Some(targets), 2, 8, 1.0 / 16.0)
        .unwrap();
    model.backward();
    let grads = model.grads().tensors().concat();
    (logits, grads)
}

/// `‖a − b‖ / ‖b‖`.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (f64::from(x) - f64::from(y)).powi(2);
        norm += f64::from(y).powi(2);
    }
    (diff / norm).sqrt()
}

#[test]
fn bf16_logits_and_gradients_are_the_f32_ones_within_bf16_rounding() {
    let (mut model, inputs, targets) = tiny_f32_model(11);
    let (logits32, grads32) = pass(&mut model, &inputs, &targets);
    model.set_precision(Precision::Bf16).unwrap();
    assert_eq!(model.precision(), Precision::Bf16);
    let (logits16, grads16) = pass(&mut model, &inputs, &targets);
    // bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.2%) per operand; through two
    // layers and the head the errors stay around 1%.
    let (logit_error, grad_error) = (
        relative_error(&logits16, &logits32),
        relative_error(&grads16, &grads32),
    );
    assert!(logit_error > 0.0, "bf16 rounded nothing");
    assert!(logit_error < 0.02, "logits off by {logit_error}");
    assert!(grad_error < 0.05, "gradients off by {grad_error}");
    model.set_precision(Precision::F32).unwrap();
    let (logits_again, _) = pass(&mut model, &inputs, &targets);
    assert_eq!(logits_again, logits32, "f32 again is f32 exactly");
}

#[test]
fn bf16_copies_follow_every_change_of_the_weights() {
    let (mut model, inputs, targets) = tiny_f32_model(21);
    model.set_precision(Precision::Bf16).unwrap();
    let mut optimizer = model
        .optimizer(OptimizerSettings::adamw(0.9, 0.95, 0.1))
        .unwrap();
    pass(&mut model, &inputs, &targets);
    model.optimizer_step(&mut optimizer, 1e-2, 1.0);
    // A model made from the stepped weights computes what the stepped model computes: its
    // copies were remade after the step.
    let weights = model.state_tensors().unwrap();
    let (mut fresh, _, _) = tiny_f32_model(99);
    fresh.load_params(&weights).unwrap();
    fresh.set_precision(Precision::Bf16).unwrap();
    assert_eq!(
        pass(&mut model, &inputs, &targets),
        pass(&mut fresh, &inputs, &targets)
    );
    // And loading weights remakes them too.
    let (mut other, _, _) = tiny_f32_model(5);
    other.set_precision(Precision::Bf16).unwrap();
    other.load_params(&weights).unwrap();
    assert_eq!(
        pass(&mut other, &inputs, &targets),
        pass(&mut fresh, &inputs, &targets)
    );
}

/// Decoding in bf16 reads the bf16 weight copies: its logits equal the bf16 full forward pass's
/// (the same rounded operands, only the f32 sums in another order) and stay within bf16's
/// precision of the f32 decoder's, without being the f32 logits themselves.
#[test]
fn bf16_decoding_matches_the_bf16_forward_and_f32_decoding_within_bf16_precision() {
    // 48 = 32 + 16: the kernels' full vectors and their masked tails.
    let dims = ModelDims {
        dim: 48,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 67,
        multiple_of: 4,
        max_seq_len: 16,
    };
    let shape = RuntimeShape::new(dims).unwrap();
    let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 5).unwrap();
    // Weights of unit-order logits, so the tolerances below are relative to a visible scale.
    let mut rng = crate::engine::Rng::new(6);
    let mut larger = model.state_tensors().unwrap();
    for (info, tensor) in model.layout().iter().zip(&mut larger) {
        if info.shape.len() == 2 {
            tensor
                .iter_mut()
                .for_each(|x| *x = 0.3 * rng.normal() as f32);
        }
    }
    model.load_params(&larger).unwrap();
    let sequence = tokens(12, dims.vocab_size, 7);
    let decode_all = |model: &Llama<RuntimeShape, Cpu<f32>>| {
        let mut decoder = model.decoder(dims.max_seq_len).unwrap();
        let steps: Vec<Vec<f32>> = sequence
            .iter()
            .map(|&t| model.decode_step(&mut decoder, t).unwrap())
            .collect();
        steps
    };
    let f32_steps = decode_all(&model);
    model.set_precision(Precision::Bf16).unwrap();
    let bf16_steps = decode_all(&model);
    model
        .forward(&sequence, None, 1, sequence.len(), 1.0)
        .unwrap();
    let bf16_full = model.logits().unwrap().unwrap();

    let v = dims.vocab_size;
    let max_abs = |xs: &[f32]| xs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let mut largest_gap = 0.0f32;
    for (pos, (half, full)) in bf16_steps.iter().zip(&f32_steps).enumerate() {
        let scale = max_abs(full);
        assert!(scale > 0.5, "logits of unit order, not {scale}");
        for (o, (a, b)) in half.iter().zip(full).enumerate() {
            // bf16 keeps 8 significant bits (relative error 2^-9 per rounding); through two
            // layers of rounded weights and activations the logits move by a few per cent.
            assert!(
                (a - b).abs() <= 0.05 * scale,
                "position {pos}, logit {o}: {a} vs {b}"
            );
            largest_gap = largest_gap.max((a - b).abs());
        }
        for (o, (a, b)) in half.iter().zip(&bf16_full[pos * v..]).enumerate() {
            // Same products, f32 sums in another order (and the odd activation rounded the
            // other way at a bf16 tie boundary).
            assert!(
                (a - b).abs() <= 2e-3 * scale,
                "position {pos}, logit {o}: {a} vs {b}"
            );
        }
    }
    assert!(largest_gap > 1e-4, "bf16 decoding gave the f32 logits");
}
