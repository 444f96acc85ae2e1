use std::time::Instant;
use candle_core::{DType, Device, Tensor};
use rlxf_model::{CausalLm, LoadedModel, ModelConfig, LlamaConfig, GptNeoConfig};
fn main() {
    let dir = std::path::Path::new("/tmp/rlxf-cache/smollm2-135m-instruct");
    let smol = LoadedModel::load_dir(dir, &Device::Cpu, DType::F32).unwrap();
    let neo = LoadedModel::init_random(ModelConfig::GptNeo(GptNeoConfig::gpt_neo_125m()), 0, &Device::Cpu, DType::F32).unwrap();
    let _ = LlamaConfig::tiny();
    for (name, model) in [("smollm2", &smol), ("neo125m", &neo)] {
        for batch in [1usize, 8] {
            let ids = Tensor::zeros((batch, 32), DType::U32, &Device::Cpu).unwrap();
            let mut cache = model.new_cache();
            model.forward(&ids, None, Some(&mut cache)).unwrap();
            let step = Tensor::zeros((batch, 1), DType::U32, &Device::Cpu).unwrap();
            let start = Instant::now();
            for _ in 0..10 { let h = model.hidden_states(&step, None, Some(&mut cache)).unwrap(); let _ = model.logits_from_hidden(&h).unwrap(); }
            let t = start.elapsed().as_secs_f64() / 10.0;
            let start = Instant::now();
            for _ in 0..10 { let _ = model.hidden_states(&step, None, Some(&mut cache)).unwrap(); }
            let th = start.elapsed().as_secs_f64() / 10.0;
            println!("{name} batch {batch}: {:.1} ms/step ({:.1} ms without head)", t*1e3, th*1e3);
        }
    }
}
