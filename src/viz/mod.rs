//! Looking at what a model predicts: annotated videos, contact sheets and batch reports.
//!
//! | module | job |
//! |---|---|
//! | [`draw`] | boxes and text (embedded DejaVu Sans through `ab_glyph`) on RGB images |
//! | [`annotate`] | truth, video-level and window predictions drawn onto a frame |
//! | [`output`] | MP4 through FFmpeg (feature `video`; H.264, else MPEG-4) and animated GIFs |
//! | [`sheet`] | contact sheet: the frames the model saw and a bar chart of the top predictions |
//! | [`pipeline`] | one video end to end ([`visualize_video`]) |
//! | [`batch`] | N random clips per class folder, by seed; a whole batch with its report ([`run_batch`]) |
//! | [`confusion`] | confusion matrix PNG |
//! | [`report`] | `report.html`, `summary.csv`, the confusion matrix of a batch |
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
pub mod annotate;
pub mod batch;
pub mod confusion;
pub mod draw;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod sheet;

pub use annotate::{annotate_frame, prepare_frame, AnnotateStyle, Annotation, AnnotationLine};
pub use batch::{run_batch, sample_per_class, BatchOutput, SampledClip};
pub use confusion::ConfusionMatrix;
pub use output::{write_animation, write_gif, write_mp4, AnimationFormat};
pub use pipeline::{visualize_video, VisualizeOptions, VisualizeOutput};
pub use report::{confusion_matrix, summarize, write_report_html, write_summary_csv, ClassSummary, ReportEntry, ReportPrediction};
pub use sheet::{contact_sheet, SheetContent, SheetStyle};
