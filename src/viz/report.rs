//! Batch reports: `report.html` (one row per video with its thumbnail, truth, prediction and
//! probability; columns sortable, correct/wrong/failed filter), `summary.csv` (per-class accuracy) and
//! a confusion-matrix PNG.
use std::fmt::Write as _;
use std::path::Path;

use super::confusion::ConfusionMatrix;
use crate::error::{Error, Result};

/// One video of a batch report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportEntry {
    /// The video, as it should be shown (typically relative to the dataset root).
    pub video: String,
    /// The true label, when known.
    pub truth: Option<String>,
    /// The prediction, or why the video failed.
    pub outcome: std::result::Result<ReportPrediction, String>,
}

/// A successful prediction of a [`ReportEntry`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPrediction {
    /// The top labels with probabilities, most probable first (at least one).
    pub top: Vec<(String, f32)>,
    /// The annotated video, relative to the report's folder.
    pub annotated: Option<String>,
    /// A thumbnail image or GIF, relative to the report's folder.
    pub thumbnail: Option<String>,
    /// The contact sheet PNG, relative to the report's folder.
    pub sheet: Option<String>,
}

impl ReportEntry {
    /// The top-1 label and probability (`None` for a failed video).
    pub fn prediction(&self) -> Option<(&str, f32)> {
        self.outcome.as_ref().ok().and_then(|p| p.top.first()).map(|(l, p)| (l.as_str(), *p))
    }

    /// Whether the top-1 label equals the truth (`None` when it failed or has no truth).
    pub fn correct(&self) -> Option<bool> {
        Some(self.prediction()?.0 == self.truth.as_deref()?)
    }
}

/// Per-class results of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSummary {
    /// The true class.
    pub class: String,
    /// Videos of the class in the batch (failed ones included).
    pub videos: usize,
    /// Videos predicted correctly.
    pub correct: usize,
    /// Videos that could not be read or classified.
    pub failed: usize,
}

impl ClassSummary {
    /// `correct / (videos - failed)`; `None` when no video of the class was classified.
    pub fn accuracy(&self) -> Option<f64> {
        let done = self.videos - self.failed;
        (done > 0).then(|| self.correct as f64 / done as f64)
    }
}

/// Per-class summaries of the entries with a truth, classes in first-seen order.
pub(crate) fn summarize(entries: &[ReportEntry]) -> Vec<ClassSummary> {
    let mut out: Vec<ClassSummary> = Vec::new();
    for e in entries {
        let Some(truth) = &e.truth else { continue };
        let i = match out.iter().position(|s| &s.class == truth) {
            Some(i) => i,
            None => {
                out.push(ClassSummary { class: truth.clone(), videos: 0, correct: 0, failed: 0 });
                out.len() - 1
            }
        };
        let s = &mut out[i];
        s.videos += 1;
        match e.correct() {
            Some(true) => s.correct += 1,
            Some(false) => {}
            None => s.failed += 1,
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `summary.csv`-style per-class accuracy: `class,videos,classified,correct,failed,accuracy`, one
/// line per class, then an `ALL` line over every video. Accuracy is empty when nothing was classified.
pub fn write_summary_csv(path: impl AsRef<Path>, entries: &[ReportEntry]) -> Result<Vec<ClassSummary>> {
    let path = path.as_ref();
    let classes = summarize(entries);
    let mut s = String::from("class,videos,classified,correct,failed,accuracy\n");
    let total = ClassSummary {
        class: "ALL".into(),
        videos: classes.iter().map(|c| c.videos).sum(),
        correct: classes.iter().map(|c| c.correct).sum(),
        failed: classes.iter().map(|c| c.failed).sum(),
    };
    for c in classes.iter().chain(std::iter::once(&total)) {
        let acc = c.accuracy().map(|a| format!("{a:.4}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            csv_field(&c.class),
            c.videos,
            c.videos - c.failed,
            c.correct,
            c.failed,
            acc
        );
    }
    std::fs::write(path, s).map_err(|e| Error::io(path, e))?;
    Ok(classes)
}

/// The confusion matrix of the classified entries with a truth: rows are the truths (in `rows` order,
/// then any others in first-seen order), columns the classifier's `labels` (then any other predicted
/// label).
pub(crate) fn confusion_matrix(entries: &[ReportEntry], rows: &[String], labels: &[String]) -> ConfusionMatrix {
    let mut rows = rows.to_vec();
    let mut cols = labels.to_vec();
    for e in entries {
        if let (Some(t), Some((p, _))) = (&e.truth, e.prediction()) {
            if !rows.contains(t) {
                rows.push(t.clone());
            }
            if !cols.iter().any(|c| c == p) {
                cols.push(p.to_string());
            }
        }
    }
    let mut m = ConfusionMatrix::new(rows, cols);
    for e in entries {
        if let (Some(t), Some((p, _))) = (&e.truth, e.prediction()) {
            // Every row and column was added above.
            let _ = m.add(t, p);
        }
    }
    m
}

fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

/// Writes `report.html`: a summary line and a table with one row per entry (thumbnail linking to the
/// annotated video, video name, truth, prediction, probability, result, contact sheet link). Clicking a
/// column header sorts by it; buttons show all rows or only correct, wrong or failed ones. Media paths
/// are used as given (relative to the report).
pub fn write_report_html(path: impl AsRef<Path>, title: &str, entries: &[ReportEntry]) -> Result<()> {
    let path = path.as_ref();
    let classified = entries.iter().filter(|e| e.outcome.is_ok()).count();
    let with_truth = entries.iter().filter(|e| e.correct().is_some()).count();
    let correct = entries.iter().filter(|e| e.correct() == Some(true)).count();
    let failed = entries.len() - classified;
    let acc = if with_truth > 0 { format!("{:.1}%", 100.0 * correct as f64 / with_truth as f64) } else { "n/a".into() };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }}
th {{ cursor: pointer; background: #f3f5f8; user-select: none; }}
th.sorted-asc::after {{ content: " \25B2"; }} th.sorted-desc::after {{ content: " \25BC"; }}
tr.correct td.result {{ color: #1a7f37; }} tr.wrong td.result {{ color: #c62828; }} tr.failed td.result {{ color: #8a6d00; }}
tr.failed {{ background: #fff8e1; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
img.thumb {{ max-width: 200px; display: block; }}
.filters button {{ margin-right: .4em; }}
</style></head><body>
<h1>{t}</h1>
<p>{n} videos: {classified} classified, {failed} failed; top-1 accuracy {acc} ({correct} of {with_truth} with a known label).</p>
<p class="filters">Show: <button data-show="all">all</button><button data-show="correct">correct</button><button data-show="wrong">wrong</button><button data-show="failed">failed</button></p>
<table id="report"><thead><tr>
<th data-type="num">#</th><th data-type="none">clip</th><th data-type="text">video</th><th data-type="text">truth</th><th data-type="text">prediction</th><th data-type="num">probability</th><th data-type="result">result</th><th data-type="none">details</th>
</tr></thead><tbody>
"#,
        t = esc(title),
        n = entries.len()
    );
    for (i, e) in entries.iter().enumerate() {
        write_report_row(&mut h, i, e);
    }
    h.push_str(REPORT_TAIL);
    std::fs::write(path, h).map_err(|e| Error::io(path, e))
}

/// One `<tr>` of the report: the entry's thumbnail, names, prediction and result (or its failure).
fn write_report_row(h: &mut String, i: usize, e: &ReportEntry) {
    let (class, result, rank) = match (&e.outcome, e.correct()) {
        (Err(_), _) => ("failed", "failed", 2),
        (Ok(_), Some(true)) => ("correct", "correct", 0),
        (Ok(_), Some(false)) => ("wrong", "wrong", 1),
        (Ok(_), None) => ("unknown", "-", 3),
    };
    let truth = e.truth.as_deref().unwrap_or("");
    let _ = write!(h, "<tr class=\"{class}\" data-result=\"{class}\"><td class=\"num\">{}</td>", i + 1);
    match &e.outcome {
        Ok(p) => {
            let thumb = match (&p.thumbnail, &p.annotated) {
                (Some(t), Some(a)) => {
                    format!("<a href=\"{}\"><img class=\"thumb\" src=\"{}\" alt=\"\"></a>", attr(a), attr(t))
                }
                (Some(t), None) => format!("<img class=\"thumb\" src=\"{}\" alt=\"\">", attr(t)),
                (None, Some(a)) => format!("<a href=\"{}\">video</a>", attr(a)),
                (None, None) => String::new(),
            };
            let (label, prob) = p.top.first().map(|(l, p)| (l.as_str(), *p)).unwrap_or(("", 0.0));
            let others: Vec<String> = p.top.iter().skip(1).map(|(l, p)| format!("{} {:.1}%", l, 100.0 * p)).collect();
            let sheet =
                p.sheet.as_ref().map(|s| format!("<a href=\"{}\">contact sheet</a>", attr(s))).unwrap_or_default();
            let _ = writeln!(
                h,
                "<td>{thumb}</td><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td class=\"num\" data-value=\"{prob}\">{:.1}%</td><td class=\"result\" data-value=\"{rank}\">{result}</td><td>{sheet}</td></tr>",
                esc(&e.video),
                esc(truth),
                attr(&others.join(", ")),
                esc(label),
                100.0 * prob
            );
        }
        Err(reason) => {
            let _ = writeln!(
                h,
                "<td></td><td>{}</td><td>{}</td><td></td><td class=\"num\" data-value=\"-1\"></td><td class=\"result\" data-value=\"{rank}\">{result}</td><td>{}</td></tr>",
                esc(&e.video),
                esc(truth),
                esc(reason)
            );
        }
    }
}

/// The end of `report.html`: the table's close and the script that sorts by a clicked header and filters
/// rows by result.
const REPORT_TAIL: &str = r#"</tbody></table>
<script>
(function () {
  const table = document.getElementById('report');
  const body = table.tBodies[0];
  const value = (row, i, type) => {
    const cell = row.cells[i];
    if (type === 'num' || type === 'result') {
      const v = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
      return parseFloat(v);
    }
    return cell.textContent.toLowerCase();
  };
  table.querySelectorAll('th').forEach((th, i) => {
    const type = th.dataset.type;
    if (type === 'none') return;
    th.addEventListener('click', () => {
      const asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(t => t.classList.remove('sorted-asc', 'sorted-desc'));
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = value(a, i, type), y = value(b, i, type);
        const c = x < y ? -1 : x > y ? 1 : 0;
        return asc ? c : -c;
      });
      rows.forEach(r => body.appendChild(r));
    });
  });
  document.querySelectorAll('.filters button').forEach(b => b.addEventListener('click', () => {
    const show = b.dataset.show;
    Array.from(body.rows).forEach(r => { r.style.display = (show === 'all' || r.dataset.result === show) ? '' : 'none'; });
  }));
})();
</script>
</body></html>
"#;
