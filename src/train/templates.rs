//! The training text: every clip gets one of ActionCLIP's 16 templates, drawn uniformly, filled with its
//! class. The draw is keyed by `(seed, epoch, clip)`, so a resumed run draws the same sentences, and so does
//! a data-parallel run whatever the batch size or the number of processes.
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

    /// The training text of the clips `clips` (dataset indices) with labels `labels` in `epoch`:
    /// `labels.len()` labels -> `[B, context]` u32.
    pub(crate) fn draw(
        &self,
        labels: &[u32],
        clips: &[usize],
        seed: u64,
        epoch: usize,
        device: &Device,
    ) -> Result<Tensor> {
        if clips.len() != labels.len() {
            return Err(Error::Labels(format!("{} labels for {} clips", labels.len(), clips.len())));
        }
        let mut ids = Vec::with_capacity(labels.len() * self.context);
        for (&label, &clip) in labels.iter().zip(clips) {
            if label as usize >= self.classes {
                return Err(Error::Labels(format!("label {label} is outside the {} classes", self.classes)));
            }
            let mut rng = sample_rng(seed ^ TEMPLATE_DOMAIN, epoch as u64, clip as u64);
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
    fn draws_depend_on_the_clip_not_the_batch() {
        let tok = Tokenizer::new();
        let bank = PromptBank::new(&tok, &class_words(&classes(&["Archery", "Bowling"])).unwrap(), 77).unwrap();
        let labels = [0, 1, 1, 0, 1, 0, 0, 1];
        let clips: Vec<usize> = (0..8).collect();
        let a = bank.draw(&labels, &clips, 3, 1, &Device::Cpu).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(a.len(), 8);
        let halves = [
            bank.draw(&labels[..4], &clips[..4], 3, 1, &Device::Cpu).unwrap().to_vec2::<u32>().unwrap(),
            bank.draw(&labels[4..], &clips[4..], 3, 1, &Device::Cpu).unwrap().to_vec2::<u32>().unwrap(),
        ];
        assert_eq!(a, halves.concat(), "two half batches draw what the whole batch draws");
        let later = bank.draw(&labels, &clips, 3, 2, &Device::Cpu).unwrap().to_vec2::<u32>().unwrap();
        assert_ne!(a, later, "another epoch draws other templates");
        assert!(bank.draw(&[2], &[0], 3, 1, &Device::Cpu).is_err());
        assert!(bank.draw(&[0, 1], &[0], 3, 1, &Device::Cpu).is_err());
        assert!(PromptBank::new(&tok, &[], 77).unwrap().draw(&[0], &[0], 3, 1, &Device::Cpu).is_err());
    }
}
