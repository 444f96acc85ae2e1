use std::time::Instant;
use candle_core::{DType, Device};
use rlxf_model::{GptNeoConfig, LoadedModel, ModelConfig};
use rlxf_train::setup::EncodedPair;
use rlxf_train::reward::RewardObjective;
use rlxf_train::sft::{SftExample, SftObjective};
use rlxf_train::Objective;
use rlxf_train::optim::{AdamW, named_params};

#[test]
fn probe() {
    let model = LoadedModel::init_random(ModelConfig::GptNeo(GptNeoConfig::tiny()), 1, &Device::Cpu, DType::F32).unwrap();
    let pairs: Vec<EncodedPair> = (0..16u32).map(|i| EncodedPair { id: i.to_string(), prompt: (0..40).map(|j| 100 + i + j).collect(), chosen: (0..24).map(|j| 500 + j).collect(), rejected: (0..24).map(|j| 900 + j).collect(), label: 1.0 }).collect();
    let examples: Vec<SftExample> = pairs.iter().map(|p| SftExample { prompt: p.prompt.clone(), reply: p.chosen.clone() }).collect();
    let mut sft = SftObjective::new(model, 50256, examples, vec![], 16);
    let idx: Vec<usize> = (0..16).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let out = sft.micro_batch(&idx).unwrap();
        let f = t.elapsed();
        let g = out.loss_sum.backward().unwrap();
        let b = t.elapsed();
        let mut opt = AdamW::new(named_params(&sft.model().varmap), Default::default()).unwrap();
        let grads = opt.gradients(&g);
        let t2 = Instant::now();
        opt.step(&grads, 1e-3, 1.0).unwrap();
        eprintln!("sft fwd {:?} fwd+bwd {:?} adam {:?}", f, b, t2.elapsed());
    }
    let model = LoadedModel::init_random(ModelConfig::GptNeo(GptNeoConfig::tiny()), 1, &Device::Cpu, DType::F32).unwrap();
    let mut rm = RewardObjective::new(model, 1, 50256, pairs, vec![], 16).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let out = rm.micro_batch(&idx).unwrap();
        let f = t.elapsed();
        out.loss_sum.backward().unwrap();
        eprintln!("rm fwd {:?} fwd+bwd {:?}", f, t.elapsed());
    }
}
