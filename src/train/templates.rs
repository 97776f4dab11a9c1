//! The training text: every clip gets one of ActionCLIP's 16 templates, drawn uniformly, filled with its
//! class. The draw is keyed by `(seed, epoch, batch)`, so a resumed run draws the same sentences.
use candle_core::{Device, Tensor};
use rand::Rng;

use crate::data::sample_rng;
use crate::{prompts, Error, Result, Tokenizer};

/// Domain separating the template RNG from the loader's streams.
const TEMPLATE_DOMAIN: u64 = 0x5445_4d50_4c41_5445; // "TEMPLATE"

/// Humanized class names for the prompts; they must be distinct, or two classes would share every sentence.
pub(crate) fn class_words(classes: &[String]) -> Result<Vec<String>> {
    if classes.is_empty() {
        return Err(Error::Labels("the class list is empty".into()));
    }
    let words: Vec<String> = classes.iter().map(|c| prompts::humanize(c)).collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(j) = words[..i].iter().position(|x| x == w) {
            return Err(Error::Labels(format!(
                "classes {:?} and {:?} both read {w:?} as words; rename one",
                classes[j], classes[i]
            )));
        }
    }
    Ok(words)
}

/// The tokens of every (template, class) sentence, tokenized once per run.
pub(crate) struct PromptBank {
    /// Template-major rows of `row` ids each.
    ids: Vec<u32>,
    /// Ids per sentence.
    row: usize,
    /// Number of classes.
    classes: usize,
    /// The text tower's context length.
    context: usize,
}

impl PromptBank {
    /// Tokenizes the sentences of `words` (one per class) for a text tower of `context` positions.
    pub(crate) fn new(tokenizer: &Tokenizer, words: &[String], context: usize) -> Result<Self> {
        let sentences = prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES, words);
        let mut ids = Vec::with_capacity(sentences.len() * 77);
        for s in &sentences {
            ids.extend(tokenizer.tokenize(s, true)?);
        }
        let row = ids.len() / sentences.len().max(1);
        Ok(Self { ids, row, classes: words.len(), context })
    }

    /// The training text of each clip of batch `batch` of `epoch`: `labels.len()` labels -> `[B, context]` u32.
    pub(crate) fn draw(
        &self,
        labels: &[u32],
        seed: u64,
        epoch: usize,
        batch: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let mut rng = sample_rng(seed ^ TEMPLATE_DOMAIN, epoch as u64, batch as u64);
        let mut ids = Vec::with_capacity(labels.len() * self.context);
        for &label in labels {
            if label as usize >= self.classes {
                return Err(Error::Labels(format!("label {label} is outside the {} classes", self.classes)));
            }
            let j = rng.gen_range(0..prompts::ACTIONCLIP_TEMPLATES.len());
            let at = (j * self.classes + label as usize) * self.row;
            let mut sentence = self.ids[at..at + self.row].to_vec();
            sentence.resize(self.context, 0);
            ids.extend(sentence);
        }
        Ok(Tensor::from_vec(ids, (labels.len(), self.context), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_words_must_be_distinct() {
        assert!(class_words(&[]).is_err());
        assert!(class_words(&classes(&["ApplyLipstick", "Apply_Lipstick"])).is_err());
        assert_eq!(class_words(&classes(&["ApplyLipstick", "Archery"])).unwrap(), ["apply lipstick", "archery"]);
    }

    #[test]
    fn draws_repeat_for_the_same_key_and_reject_bad_labels() {
        let tok = Tokenizer::new();
        let bank = PromptBank::new(&tok, &class_words(&classes(&["Archery", "Bowling"])).unwrap(), 77).unwrap();
        let labels = [0, 1, 1, 0, 1, 0, 0, 1];
        let a = bank.draw(&labels, 3, 1, 2, &Device::Cpu).unwrap();
        let b = bank.draw(&labels, 3, 1, 2, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), &[8, 77]);
        assert_eq!(a.to_vec2::<u32>().unwrap(), b.to_vec2::<u32>().unwrap());
        let c = bank.draw(&labels, 3, 1, 3, &Device::Cpu).unwrap();
        assert_ne!(a.to_vec2::<u32>().unwrap(), c.to_vec2::<u32>().unwrap(), "another batch draws other templates");
        assert!(bank.draw(&[2], 3, 1, 2, &Device::Cpu).is_err());
        assert!(PromptBank::new(&tok, &[], 77).unwrap().draw(&[0], 3, 1, 2, &Device::Cpu).is_err());
    }
}
