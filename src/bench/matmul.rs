//! `tinyllm bench matmul`: the speed of each matmul shape of a model's training step, through
//! the backend calls the model makes (forward, and the backward pass's input and weight
//! gradients), in GFLOP/s: where the step's largest part goes, shape by shape.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use super::{BenchError, median};
use crate::engine::{
    Backend, Device, DeviceError, DeviceInfo, OnDevice, Precision, Rng, Write, matmul_kernel,
};
use crate::model::ModelDims;

/// What to measure.
pub struct MatmulBench {
    pub model: String,
    pub dims: ModelDims,
    /// Rows of every product: batch × seq.
    pub rows: usize,
    pub runs: usize,
    pub precision: Precision,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatmulFigures {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub precision: Precision,
    /// The matmul kernel (`avx512-bf16`, `gemm f32`, `cuBLAS sgemm`, …).
    pub kernel: String,
    pub rows: usize,
    pub runs: usize,
    pub shapes: Vec<ShapeFigures>,
    /// The products of one training step (every shape times its count), in ms: forward and
    /// backward, each shape's median summed.
    pub step_forward_ms: f64,
    pub step_backward_ms: f64,
}

/// One weight shape: its forward product, and its backward pass (input and weight gradient).
#[derive(Debug, Clone, Serialize)]
pub struct ShapeFigures {
    /// The weights of this shape (`q_proj, o_proj`, …).
    pub weights: String,
    pub inputs: usize,
    pub outputs: usize,
    /// Weights of this shape in the model (a step multiplies each by this many).
    pub count: usize,
    /// Median GFLOP/s of the forward product.
    pub forward_gflops: f64,
    /// Median GFLOP/s of the backward pass (both gradients, twice the forward's work).
    pub backward_gflops: f64,
}

impl fmt::Display for MatmulFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model {}, {} rows, {}, {} threads, {} ({} matmuls), median of {} runs",
            self.model,
            self.rows,
            self.device,
            self.threads,
            self.precision,
            self.kernel,
            self.runs
        )?;
        writeln!(
            f,
            "  {:<28} {:>6} {:>6} {:>6} {:>14} {:>15}",
            "weights", "in", "out", "count", "forward GFLOP/s", "backward GFLOP/s"
        )?;
        for s in &self.shapes {
            writeln!(
                f,
                "  {:<28} {:>6} {:>6} {:>6} {:>14.0} {:>15.0}",
                s.weights, s.inputs, s.outputs, s.count, s.forward_gflops, s.backward_gflops
            )?;
        }
        write!(
            f,
            "  one step's products: forward {:.1} ms, backward {:.1} ms",
            self.step_forward_ms, self.step_backward_ms
        )
    }
}

/// The distinct weight shapes of a model: `(names, inputs, outputs, count)`.
fn weight_shapes(dims: &ModelDims) -> Vec<(String, usize, usize, usize)> {
    let (c, kv, h, v, l) = (
        dims.dim,
        dims.n_kv_heads * dims.head_dim(),
        dims.hidden_dim(),
        dims.vocab_size,
        dims.n_layers,
    );
    let mut shapes: Vec<(String, usize, usize, usize)> = Vec::new();
    for (name, inputs, outputs, count) in [
        ("q_proj", c, c, l),
        ("k_proj", c, kv, l),
        ("v_proj", c, kv, l),
        ("o_proj", c, c, l),
        ("gate_proj", c, h, l),
        ("up_proj", c, h, l),
        ("down_proj", h, c, l),
        ("lm_head", c, v, 1),
    ] {
        match shapes
            .iter_mut()
            .find(|(_, i, o, _)| (*i, *o) == (inputs, outputs))
        {
            Some(shape) => {
                shape.0 = format!("{}, {name}", shape.0);
                shape.3 += count;
            }
            None => shapes.push((name.to_string(), inputs, outputs, count)),
        }
    }
    shapes
}

/// Measures every weight shape of `bench.dims` on `device`.
pub fn run(device: Device, bench: &MatmulBench) -> Result<MatmulFigures, BenchError> {
    device
        .run(Measure { bench })
        .map_err(|e: DeviceError| BenchError::Dispatch(e.into()))?
}

struct Measure<'a> {
    bench: &'a MatmulBench,
}

impl OnDevice for Measure<'_> {
    type Output = Result<MatmulFigures, BenchError>;
    fn run<B: Backend<Float = f32>>(self, backend: B, info: &DeviceInfo) -> Self::Output {
        let bench = self.bench;
        let rows = bench.rows;
        let mut rng = Rng::new(7);
        let mut values = |len: usize| -> Result<B::Buf, BenchError> {
            let host: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 0.5).collect();
            Ok(backend.upload(&host)?)
        };
        let mut shapes = Vec::new();
        let (mut step_forward, mut step_backward) = (0.0, 0.0);
        for (weights, ic, oc, count) in weight_shapes(&bench.dims) {
            let (inp, w, dout) = (values(rows * ic)?, values(oc * ic)?, values(rows * oc)?);
            let mut w_half = backend.half_zeros(match bench.precision {
                Precision::Bf16 => oc * ic,
                Precision::F32 => 0,
            })?;
            if bench.precision == Precision::Bf16 {
                backend.round_to_half(&mut w_half, &w);
            }
            let (mut out, mut dinp, mut dw) = (
                backend.zeros(rows * oc)?,
                backend.zeros(rows * ic)?,
                backend.zeros(oc * ic)?,
            );
            let time = |op: &mut dyn FnMut()| {
                // Half a second of the product first, so that no figure is taken on threads
                // and clocks still waking up.
                let warming = Instant::now();
                while warming.elapsed().as_secs_f64() < 0.5 {
                    op();
                    backend.synchronize();
                }
                let mut secs: Vec<f64> = (0..bench.runs)
                    .map(|_| {
                        backend.synchronize();
                        let started = Instant::now();
                        op();
                        backend.synchronize();
                        started.elapsed().as_secs_f64()
                    })
                    .collect();
                median(&mut secs)
            };
            let forward = time(&mut || match bench.precision {
                Precision::Bf16 => backend.matmul_forward_half(&mut out, &inp, &w_half, ic, oc),
                Precision::F32 => backend.matmul_forward(&mut out, &inp, &w, ic, oc),
            });
            // As the model calls it for its first product into an input gradient.
            let write = Write::Overwrite;
            let backward = time(&mut || match bench.precision {
                Precision::Bf16 => backend
                    .matmul_backward_half(&mut dinp, &mut dw, &dout, &inp, &w_half, ic, oc, write),
                Precision::F32 => {
                    backend.matmul_backward(&mut dinp, &mut dw, &dout, &inp, &w, ic, oc, write)
                }
            });
            let flops = 2.0 * (rows * ic * oc) as f64;
            step_forward += forward * count as f64;
            step_backward += backward * count as f64;
            shapes.push(ShapeFigures {
                weights,
                inputs: ic,
                outputs: oc,
                count,
                forward_gflops: flops / forward / 1e9,
                backward_gflops: 2.0 * flops / backward / 1e9,
            });
        }
        Ok(MatmulFigures {
            model: bench.model.clone(),
            device: info.name.clone(),
            threads: rayon::current_num_threads(),
            precision: bench.precision,
            kernel: matmul_kernel(info.device, bench.precision).to_string(),
            rows,
            runs: bench.runs,
            shapes,
            step_forward_ms: step_forward * 1e3,
            step_backward_ms: step_backward * 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn shapes_that_repeat_are_measured_once_and_counted() {
        let shapes = weight_shapes(&Preset::Tutorial.dims());
        let names: Vec<&str> = shapes.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "q_proj, o_proj",
                "k_proj, v_proj",
                "gate_proj, up_proj",
                "down_proj",
                "lm_head"
            ]
        );
        assert_eq!(shapes[0].3, 16);
        assert_eq!(shapes[4], ("lm_head".to_string(), 288, 4096, 1));
    }

    #[test]
    fn a_tiny_model_reports_every_shape() {
        let bench = MatmulBench {
            model: "tiny".into(),
            dims: ModelDims {
                dim: 16,
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 1,
                vocab_size: 40,
                multiple_of: 4,
                max_seq_len: 8,
            },
            rows: 8,
            runs: 2,
            precision: Precision::Bf16,
        };
        let figures = run(Device::Cpu, &bench).unwrap();
        assert_eq!(figures.shapes.len(), weight_shapes(&bench.dims).len());
        assert!(figures.shapes.iter().all(|s| s.forward_gflops > 0.0));
        assert!(figures.to_string().contains("lm_head"));
    }
}
