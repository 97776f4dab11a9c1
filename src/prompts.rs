//! Text prompts: templates that turn a class label into a sentence (prefix, cloze and suffix forms), the
//! 16 templates of ActionCLIP, and a label humanizer (`ApplyEyeMakeup` -> `apply eye makeup`).
//!
//! Public: [`Template`], [`ACTIONCLIP_TEMPLATES`], [`fill_all`] and [`humanize`].
use std::borrow::Cow;

use crate::{Error, Result};

/// The placeholder a template's label replaces.
const PLACEHOLDER: &str = "{}";

/// A sentence pattern with one `{}` where the label goes, classified by where the label sits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Template {
    /// The label comes last: `"a video of {}"`.
    Prefix(Cow<'static, str>),
    /// The label sits inside: `"Can you recognize the action of {}?"`.
    Cloze(Cow<'static, str>),
    /// The label comes first: `"{}, an action"`.
    Suffix(Cow<'static, str>),
}

impl Template {
    /// Parses a pattern holding exactly one `{}`; its position decides the kind (a bare `"{}"` is a prefix
    /// template with an empty prefix).
    pub fn new(pattern: impl Into<String>) -> Result<Self> {
        let pattern: String = pattern.into();
        match pattern.matches(PLACEHOLDER).count() {
            1 => {}
            n => return Err(Error::Config(format!("template {pattern:?} must hold exactly one {{}}, found {n}"))),
        }
        Ok(if pattern.ends_with(PLACEHOLDER) {
            Template::Prefix(Cow::Owned(pattern))
        } else if pattern.starts_with(PLACEHOLDER) {
            Template::Suffix(Cow::Owned(pattern))
        } else {
            Template::Cloze(Cow::Owned(pattern))
        })
    }

    /// The pattern with its `{}`.
    pub fn pattern(&self) -> &str {
        match self {
            Template::Prefix(p) | Template::Cloze(p) | Template::Suffix(p) => p,
        }
    }

    /// The sentence for `label`.
    pub fn fill(&self, label: &str) -> String {
        fill(self.pattern(), label)
    }
}

/// Replaces the `{}` of `pattern` with `label`.
fn fill(pattern: &str, label: &str) -> String {
    pattern.replacen(PLACEHOLDER, label, 1)
}

/// The 16 text templates of ActionCLIP, in the reference's order (the test-time ensemble is
/// template-major in this order).
pub const ACTIONCLIP_TEMPLATES: [Template; 16] = [
    Template::Prefix(Cow::Borrowed("a photo of action {}")),
    Template::Prefix(Cow::Borrowed("a picture of action {}")),
    Template::Prefix(Cow::Borrowed("Human action of {}")),
    Template::Suffix(Cow::Borrowed("{}, an action")),
    Template::Suffix(Cow::Borrowed("{} this is an action")),
    Template::Suffix(Cow::Borrowed("{}, a video of action")),
    Template::Prefix(Cow::Borrowed("Playing action of {}")),
    Template::Prefix(Cow::Borrowed("{}")),
    Template::Prefix(Cow::Borrowed("Playing a kind of action, {}")),
    Template::Prefix(Cow::Borrowed("Doing a kind of action, {}")),
    Template::Prefix(Cow::Borrowed("Look, the human is {}")),
    Template::Cloze(Cow::Borrowed("Can you recognize the action of {}?")),
    Template::Prefix(Cow::Borrowed("Video classification of {}")),
    Template::Prefix(Cow::Borrowed("A video of {}")),
    Template::Prefix(Cow::Borrowed("The man is {}")),
    Template::Prefix(Cow::Borrowed("The woman is {}")),
];

/// Every template applied to every label, template-major: row `j * labels.len() + c` is template j with
/// label c.
pub fn fill_all<S: AsRef<str>>(templates: &[Template], labels: &[S]) -> Vec<String> {
    templates.iter().flat_map(|t| labels.iter().map(move |l| t.fill(l.as_ref()))).collect()
}

/// Turns a dataset label into words: CamelCase is split (`ApplyEyeMakeup` -> `apply eye makeup`,
/// `YoYo` -> `yo yo`), `_` and `-` become spaces (`brush_hair` -> `brush hair`), runs of capitals stay
/// together (`PlayingTV` -> `playing tv`), and everything is lower-cased.
pub fn humanize(label: &str) -> String {
    let chars: Vec<char> = label.chars().collect();
    let mut out = String::with_capacity(label.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c == '-' || c.is_whitespace() {
            out.push(' ');
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push(' ');
            }
        }
        out.extend(c.to_lowercase());
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizes_dataset_labels() {
        assert_eq!(humanize("ApplyEyeMakeup"), "apply eye makeup");
        assert_eq!(humanize("brush_hair"), "brush hair");
        assert_eq!(humanize("YoYo"), "yo yo");
        assert_eq!(humanize("PlayingTV"), "playing tv");
        assert_eq!(humanize("fall_floor"), "fall floor");
        assert_eq!(humanize("already spaced"), "already spaced");
        assert_eq!(humanize("HandstandPushups"), "handstand pushups");
        assert_eq!(humanize("UCFTest"), "ucf test");
        assert_eq!(humanize("playing_guitar"), "playing guitar");
        assert_eq!(humanize("abseiling"), "abseiling");
    }

    #[test]
    fn template_kinds_follow_the_placeholder() {
        for t in &ACTIONCLIP_TEMPLATES {
            assert_eq!(&Template::new(t.pattern()).unwrap(), t);
        }
        assert_eq!(ACTIONCLIP_TEMPLATES[13].fill("archery"), "A video of archery");
        assert!(Template::new("no placeholder").is_err());
        assert!(Template::new("{} and {}").is_err());
    }

    #[test]
    fn fill_all_is_template_major() {
        let s = fill_all(&ACTIONCLIP_TEMPLATES[..2], &["a", "b"]);
        assert_eq!(s, ["a photo of action a", "a photo of action b", "a picture of action a", "a picture of action b"]);
    }
}
