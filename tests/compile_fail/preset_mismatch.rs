// Parameters of the stories15M preset handed to a model of the tutorial preset: refused by the
// compiler, because each preset is its own type.
use tinyllm::engine::Cpu;
use tinyllm::model::shape::{Stories15M, Tutorial};
use tinyllm::model::{Llama, LlamaConfig, Params};

fn main() {
    let params: Params<Stories15M, Cpu<f32>> = Params::from_tensors(Vec::new());
    let _model = Llama::with_params(Cpu::<f32>::new(), Tutorial, LlamaConfig::default(), params);
}
