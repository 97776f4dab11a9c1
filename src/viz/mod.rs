//! Looking at what a model predicts: annotated videos, contact sheets and batch reports.
//!
//! What is public, by job (re-exported here; the submodules are private):
//!
//! | job | items |
//! |---|---|
//! | one video end to end | [`visualize_video`], [`VisualizeOptions`], [`VisualizeOutput`] |
//! | a batch with its report | [`sample_per_class`], [`SampledClip`], [`run_batch`], [`BatchOutput`] |
//! | annotated frames | [`annotate_frame`], [`Annotation`], [`AnnotateStyle`], [`Rect`], [`prepare_frame`] |
//! | videos and GIFs | [`write_animation`] (MP4 with feature `video`, else GIF), [`write_gif`], [`AnimationFormat`] |
//! | contact sheets | [`contact_sheet`], [`SheetContent`], [`SheetStyle`] |
//! | reports | [`write_report_html`], [`write_summary_csv`], [`ReportEntry`], [`ReportPrediction`], [`ClassSummary`], [`ConfusionMatrix`] |
//!
//! Text is drawn in the embedded DejaVu Sans through `ab_glyph`, so nothing depends on system fonts.
//!
//! The video-level prediction drawn everywhere is
//! [`ZeroShotClassifier::predict_path`](crate::ZeroShotClassifier::predict_path): the evaluation's
//! sampling and preprocessing, so what a picture shows is what an evaluation counts.
//!
//! ```no_run
//! # fn main() -> actionclip::Result<()> {
//! use actionclip::{prompts, viz, ActionClip, Tokenizer, ZeroShotClassifier};
//! let (model, _) = ActionClip::load("model_best.pt", &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let tokenizer = Tokenizer::new();
//! let labels = actionclip::inference::parse_labels("ucf101", true)?.labels;
//! let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels, &prompts::ACTIONCLIP_TEMPLATES)?;
//! let out = viz::visualize_video(&zs, "v_Archery_g01_c01.avi", Some("archery"), "viz_out", "archery_g01",
//!                                &viz::VisualizeOptions::default())?;
//! // viz_out/archery_g01.annotated.mp4 (or .gif without the `video` feature), viz_out/archery_g01.sheet.png
//! # Ok(()) }
//! ```
mod annotate;
mod batch;
mod confusion;
mod draw;
mod output;
mod pipeline;
mod report;
mod sheet;

pub use annotate::{annotate_frame, prepare_frame, AnnotateStyle, Annotation};
pub use batch::{run_batch, sample_per_class, BatchOutput, SampledClip};
pub use confusion::ConfusionMatrix;
pub use draw::Rect;
pub use output::{write_animation, write_gif, AnimationFormat};
pub use pipeline::{visualize_video, VisualizeOptions, VisualizeOutput};
pub use report::{write_report_html, write_summary_csv, ClassSummary, ReportEntry, ReportPrediction};
pub use sheet::{contact_sheet, SheetContent, SheetStyle};
