//! A backend with its cache: the machinery every labeler, scorer and judge runs on.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, ChoiceAnswer, CompletionParams};
use crate::cache::{cache_key, AnswerKind, LabelCache};
use crate::error::{FeedbackError, Result};
use crate::template::ChoiceQuery;

/// How many answers came from the cache and how many from the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub cached: usize,
    pub computed: usize,
}

/// Asks a [`Backend`], remembering every answer in an optional [`LabelCache`].
pub struct Engine {
    backend: Box<dyn Backend>,
    cache: Option<LabelCache>,
    stats: Cell<EngineStats>,
}

impl Engine {
    pub fn new(backend: Box<dyn Backend>, cache: Option<LabelCache>) -> Self {
        Self {
            backend,
            cache,
            stats: Cell::new(EngineStats::default()),
        }
    }

    pub fn identity(&self) -> String {
        self.backend.identity()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.get()
    }

    pub fn cache(&self) -> Option<&LabelCache> {
        self.cache.as_ref()
    }

    /// The answer to every query, from the cache where it has one and from the backend otherwise;
    /// `progress` is called with the number of answers that became available each time some did.
    pub fn answer_choices(
        &self,
        queries: &[ChoiceQuery],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<ChoiceAnswer>> {
        self.answer(AnswerKind::Choices, queries, progress, |missing, on| {
            self.backend.answer_choices(missing, on)
        })
    }

    /// Greedy continuations of every query (chain-of-thought rationales), cached like answers.
    pub fn complete(
        &self,
        queries: &[ChoiceQuery],
        params: &CompletionParams,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<String>> {
        self.answer(AnswerKind::Rationale, queries, progress, |missing, on| {
            self.backend.complete(missing, params, on)
        })
    }

    fn answer<T: Serialize + DeserializeOwned + Clone>(
        &self,
        kind: AnswerKind,
        queries: &[ChoiceQuery],
        progress: &mut dyn FnMut(usize),
        ask: impl FnOnce(&[ChoiceQuery], &mut crate::backend::OnAnswer<'_, T>) -> Result<()>,
    ) -> Result<Vec<T>> {
        let identity = self.backend.identity();
        let keys: Vec<String> = queries
            .iter()
            .map(|query| cache_key(kind, &identity, query))
            .collect();
        let mut answers: Vec<Option<T>> = match &self.cache {
            Some(cache) => keys
                .iter()
                .map(|key| cache.get(key))
                .collect::<Result<_>>()?,
            None => vec![None; queries.len()],
        };
        let missing: Vec<usize> = (0..queries.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        let cached = queries.len() - missing.len();
        if cached > 0 {
            progress(cached);
        }
        let missing_queries: Vec<ChoiceQuery> =
            missing.iter().map(|&i| queries[i].clone()).collect();
        let mut computed = 0;
        ask(&missing_queries, &mut |position, answer: T| {
            let index = *missing.get(position).ok_or_else(|| {
                FeedbackError::Backend(format!(
                    "backend answered query {position} of {}",
                    missing.len()
                ))
            })?;
            if answers[index].is_some() {
                return Err(FeedbackError::Backend(format!(
                    "backend answered query {position} twice"
                )));
            }
            if let Some(cache) = &self.cache {
                cache.put(&keys[index], kind, &identity, &answer)?;
            }
            answers[index] = Some(answer);
            computed += 1;
            progress(1);
            Ok(())
        })?;
        let stats = self.stats.get();
        self.stats.set(EngineStats {
            cached: stats.cached + cached,
            computed: stats.computed + computed,
        });
        answers
            .into_iter()
            .enumerate()
            .map(|(index, answer)| {
                answer.ok_or_else(|| {
                    FeedbackError::Backend(format!(
                        "backend returned without answering query {index}"
                    ))
                })
            })
            .collect()
    }
}
