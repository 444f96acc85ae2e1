//! Labeler configs (TOML): which backend, which prompt, which cache. See `configs/labeler-*.toml`
//! for commented examples. Relative paths are relative to the directory rlxf is run from.

use std::path::{Path, PathBuf};

use rlxf_model::Device;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{FeedbackError, Result};
use crate::local::{LocalBackend, DEFAULT_BATCH_SIZE};
use crate::openai::{OpenAiBackend, OpenAiConfig};
use crate::pairwise::{ChainOfThought, PairwiseLabeler};
use crate::template::{
    load_preamble, read_exemplars, PairwiseTemplate, PromptFormat, PAIRWISE_ENDING,
};

/// How a local model sees prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatChoice {
    /// ChatML when the tokenizer has its tokens, plain text otherwise.
    #[default]
    Auto,
    Plain,
    ChatMl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// A model directory or a Hugging Face model id.
    pub model: String,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub format: FormatChoice,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

/// The `[backend]` table: `kind = "local"` or `kind = "openai"` and that backend's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    Local(LocalConfig),
    Openai(OpenAiConfig),
}

/// The `[prompt]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// A built-in preamble (`base`, `harmless_detailed`) or the path of a text file.
    pub preamble: String,
    /// JSONL of solved examples shown before each item (few-shot).
    pub exemplars: Option<PathBuf>,
    pub ending: String,
    /// Generate a rationale greedily before answering.
    pub chain_of_thought: bool,
    pub rationale_max_new_tokens: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            preamble: "harmless_detailed".into(),
            exemplars: None,
            ending: PAIRWISE_ENDING.into(),
            chain_of_thought: false,
            rationale_max_new_tokens: 64,
        }
    }
}

/// A whole labeler config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelerConfig {
    pub backend: BackendConfig,
    #[serde(default)]
    pub prompt: PromptConfig,
    /// The SQLite label cache; unset means `cache.sqlite` in the output folder.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

impl LabelerConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|err| FeedbackError::config(origin, "(file)", err.message().to_string()))?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| FeedbackError::io(path, err))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        match &self.backend {
            BackendConfig::Local(local) if local.batch_size == 0 => Err(FeedbackError::config(
                origin,
                "backend.batch_size",
                "must be at least 1",
            )),
            BackendConfig::Local(_) => Ok(()),
            BackendConfig::Openai(openai) => openai.validate(origin),
        }?;
        if self.prompt.chain_of_thought && self.prompt.rationale_max_new_tokens == 0 {
            return Err(FeedbackError::config(
                origin,
                "prompt.rationale_max_new_tokens",
                "must be at least 1 with chain_of_thought",
            ));
        }
        Ok(())
    }

    /// Builds the backend (loading a local model on `device`).
    pub fn backend(&self, device: &Device) -> Result<Box<dyn Backend>> {
        Ok(match &self.backend {
            BackendConfig::Local(local) => {
                let dir = rlxf_model::loading::resolve_source(&local.model)?;
                let backend =
                    LocalBackend::load_dir(&dir, device)?.with_batch_size(local.batch_size);
                let backend = match local.format {
                    FormatChoice::Auto => backend,
                    FormatChoice::Plain => backend.with_format(PromptFormat::Plain),
                    FormatChoice::ChatMl => backend.with_format(PromptFormat::ChatMl),
                };
                Box::new(backend)
            }
            BackendConfig::Openai(openai) => Box::new(OpenAiBackend::new(openai.clone())?),
        })
    }

    /// The pairwise labeler the `[prompt]` table describes.
    pub fn pairwise_labeler(&self) -> Result<PairwiseLabeler> {
        let exemplars = match &self.prompt.exemplars {
            Some(path) => read_exemplars(path)?,
            None => Vec::new(),
        };
        let template = PairwiseTemplate::new(
            &load_preamble(&self.prompt.preamble)?,
            &exemplars,
            &self.prompt.ending,
        )?;
        let chain_of_thought = self.prompt.chain_of_thought.then_some(ChainOfThought {
            max_new_tokens: self.prompt.rationale_max_new_tokens,
        });
        Ok(PairwiseLabeler::new(template, chain_of_thought))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Endpoint;

    #[test]
    fn local_and_openai_configs_parse() {
        let local = LabelerConfig::from_toml(
            "[backend]\nkind = \"local\"\nmodel = \"models/tiny\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            local.backend,
            BackendConfig::Local(LocalConfig {
                model: "models/tiny".into(),
                batch_size: DEFAULT_BATCH_SIZE,
                format: FormatChoice::Auto,
            })
        );
        assert_eq!(local.prompt, PromptConfig::default());

        let openai = LabelerConfig::from_toml(
            "cache = \"c.sqlite\"\n[backend]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
             model = \"m\"\nendpoint = \"chat\"\nconcurrency = 2\n[prompt]\npreamble = \"base\"\n",
            "test",
        )
        .unwrap();
        let BackendConfig::Openai(config) = &openai.backend else {
            panic!("expected an openai backend");
        };
        assert_eq!(config.endpoint, Endpoint::Chat);
        assert_eq!(config.concurrency, 2);
        assert_eq!(config.top_logprobs, 5);
        assert_eq!(openai.cache, Some(PathBuf::from("c.sqlite")));
        openai.pairwise_labeler().unwrap();
    }

    #[test]
    fn the_shipped_example_configs_parse() {
        for (name, text) in [
            (
                "labeler-local.toml",
                include_str!("../../../configs/labeler-local.toml"),
            ),
            (
                "labeler-openai.toml",
                include_str!("../../../configs/labeler-openai.toml"),
            ),
        ] {
            let config = LabelerConfig::from_toml(text, name).unwrap();
            config.pairwise_labeler().unwrap();
        }
    }

    #[test]
    fn mistakes_name_the_field() {
        for (text, field) in [
            (
                "[backend]\nkind = \"local\"\nmodel = \"m\"\nbatch_size = 0\n",
                "batch_size",
            ),
            (
                "[backend]\nkind = \"openai\"\nmodel = \"m\"\ntop_logprobs = 50\n",
                "top_logprobs",
            ),
            (
                "[backend]\nkind = \"local\"\nmodel = \"m\"\nbogus = 1\n",
                "bogus",
            ),
            ("[backend]\nkind = \"magic\"\n", "magic"),
        ] {
            let err = LabelerConfig::from_toml(text, "labeler.toml").unwrap_err();
            assert!(err.is_bad_input());
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
