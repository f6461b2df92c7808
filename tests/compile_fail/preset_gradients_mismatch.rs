// The gradients of one preset's model cannot stand in for another preset's parameters.
use tinyllm::engine::Cpu;
use tinyllm::model::shape::{Stories260K, Tutorial};
use tinyllm::model::{Llama, LlamaConfig, Params};

fn main() {
    let small = Llama::new(Cpu::<f32>::new(), Stories260K, LlamaConfig::default(), 1).unwrap();
    let grads: Params<Stories260K, Cpu<f32>> = small.grads().clone();
    let _big = Llama::with_params(Cpu::<f32>::new(), Tutorial, LlamaConfig::default(), grads);
}
