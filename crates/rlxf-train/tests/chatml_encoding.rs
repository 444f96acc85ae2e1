//! Training data (stored in the HH format) reaches a ChatML model in ChatML: the prompt's turns are
//! re-rendered with `<|im_start|>`/`<|im_end|>` and every reply ends with `<|im_end|>`. The model
//! is the tiny GGUF fixture of rlxf-model, imported here, whose tokenizer_config has a ChatML
//! chat template.

use rlxf_train::setup::{encode_pair, load_model, Lengths};

#[test]
fn hh_pairs_are_encoded_in_the_model_chatml_template() {
    let temp = tempfile::tempdir().unwrap();
    let gguf = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlxf-model/tests/fixtures/tiny-llama-gguf/model.gguf");
    let dir = temp.path().join("chatml-model");
    rlxf_model::import_gguf(&gguf, &dir).unwrap();
    let bundle = load_model(dir.to_str().unwrap(), 0).unwrap();
    assert_eq!(bundle.template, rlxf_model::ChatTemplate::ChatMl);

    let pair = rlxf_data::PreferencePair {
        id: "p".into(),
        prompt: "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: I feel lonely.\n\nAssistant:".into(),
        chosen: " I'm sorry to hear that.".into(),
        rejected: " Ok.".into(),
        context: None,
    };
    let lengths = Lengths {
        max_length: 200,
        max_prompt_length: 150,
    };
    let encoded = encode_pair(&bundle, &pair, lengths, 1.0).unwrap();
    let tokens = |text: &str| bundle.tokenizer.encode(text).unwrap();
    let chatml_prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
                         <|im_start|>user\nI feel lonely.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(encoded.prompt, tokens(chatml_prompt));
    let im_end = bundle
        .tokenizer
        .single_token_id("<|im_end|>")
        .unwrap()
        .unwrap();
    // The HH separator space is dropped: ChatML replies start right after the newline.
    assert_eq!(
        encoded.chosen,
        [tokens("I'm sorry to hear that."), vec![im_end]].concat()
    );
    assert_eq!(encoded.rejected, [tokens("Ok."), vec![im_end]].concat());
}
