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
/// are used as given (relative to the report). Every name, label and path is HTML-escaped. The table
/// fills the window's width and no more: fixed column widths, long names wrap inside their cells and
/// thumbnails shrink to their column.
pub fn write_report_html(path: impl AsRef<Path>, title: &str, entries: &[ReportEntry]) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, report_html(title, entries)).map_err(|e| Error::io(path, e))
}

/// The text of `report.html` (see [`write_report_html`]).
fn report_html(title: &str, entries: &[ReportEntry]) -> String {
    let classified = entries.iter().filter(|e| e.outcome.is_ok()).count();
    let with_truth = entries.iter().filter(|e| e.correct().is_some()).count();
    let correct = entries.iter().filter(|e| e.correct() == Some(true)).count();
    let failed = entries.len() - classified;
    let acc = if with_truth > 0 { format!("{:.1}%", 100.0 * correct as f64 / with_truth as f64) } else { "n/a".into() };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1, p {{ overflow-wrap: anywhere; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
col.idx {{ width: 3.5em; }} col.clip {{ width: 168px; }} col.video {{ width: 22%; }}
col.prob {{ width: 7.5em; }} col.result {{ width: 6em; }} col.details {{ width: 15%; }}
th, td {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; overflow-wrap: anywhere; }}
th {{ cursor: pointer; background: #f3f5f8; user-select: none; }}
th.sorted-asc::after {{ content: " \25B2"; }} th.sorted-desc::after {{ content: " \25BC"; }}
tr.correct td.result {{ color: #1a7f37; }} tr.wrong td.result {{ color: #c62828; }} tr.failed td.result {{ color: #8a6d00; }}
tr.failed {{ background: #fff8e1; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
img.thumb {{ display: block; max-width: 100%; height: auto; }}
.filters button {{ margin-right: .4em; }}
</style></head><body>
<h1>{t}</h1>
<p>{n} videos: {classified} classified, {failed} failed; top-1 accuracy {acc} ({correct} of {with_truth} with a known label).</p>
<p class="filters">Show: <button data-show="all">all</button><button data-show="correct">correct</button><button data-show="wrong">wrong</button><button data-show="failed">failed</button></p>
<table id="report">
<colgroup><col class="idx"><col class="clip"><col class="video"><col class="truth"><col class="prediction"><col class="prob"><col class="result"><col class="details"></colgroup>
<thead><tr>
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
    h
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

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert(1)</script>";

    fn predicted(video: &str, truth: &str, top: &[(&str, f32)], media: &str) -> ReportEntry {
        ReportEntry {
            video: video.into(),
            truth: Some(truth.into()),
            outcome: Ok(ReportPrediction {
                top: top.iter().map(|(l, p)| (l.to_string(), *p)).collect(),
                annotated: Some(format!("{media}.mp4")),
                thumbnail: Some(format!("{media}.gif")),
                sheet: Some(format!("{media}.png")),
            }),
        }
    }

    fn sample() -> Vec<ReportEntry> {
        vec![
            predicted("a\"b'c.mp4", EVIL, &[(EVIL, 0.9), ("x & \"y\"", 0.1)], "videos/a\"b'c"),
            predicted("Archery/v_Archery_g01_c01.avi", "archery", &[("bowling", 0.6)], "videos/Archery__v"),
            ReportEntry {
                video: "<img src=x onerror=alert(2)>.avi".into(),
                truth: Some("archery".into()),
                outcome: Err("cannot open <b>\"x\"</b>".into()),
            },
        ]
    }

    #[test]
    fn every_name_label_and_path_is_escaped() {
        let html = report_html("<title> & co", &sample());
        // Our own script is the only one; no markup from the entries survives.
        assert_eq!(html.matches("<script>").count(), 1, "{html}");
        assert!(!html.contains(EVIL) && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<img src=x") && html.contains("&lt;img src=x onerror=alert(2)&gt;.avi"));
        assert!(!html.contains("<b>") && html.contains("cannot open &lt;b&gt;\"x\"&lt;/b&gt;"));
        assert!(
            html.contains("<title>&lt;title&gt; &amp; co</title>") && html.contains("<h1>&lt;title&gt; &amp; co</h1>")
        );
        // Quotes cannot end an attribute early: media paths and the top-list tooltip.
        assert!(html.contains(r#"href="videos/a&quot;b'c.mp4""#), "{html}");
        assert!(html.contains(r#"src="videos/a&quot;b'c.gif""#), "{html}");
        assert!(html.contains(r#"href="videos/a&quot;b'c.png""#), "{html}");
        assert!(html.contains(r#"title="x &amp; &quot;y&quot; 10.0%""#), "{html}");
        // The video name as text.
        assert!(html.contains("<td>a\"b'c.mp4</td>"), "{html}");
    }

    #[test]
    fn the_table_fits_the_window_width() {
        let html = report_html("t", &sample());
        let css = &html[html.find("<style>").unwrap()..html.find("</style>").unwrap()];
        // Fixed layout at the container's width: columns never grow past the window.
        assert!(css.contains("table { border-collapse: collapse; width: 100%; table-layout: fixed; }"), "{css}");
        // Long names break inside their cells; thumbnails shrink to their column.
        let cells = css.lines().find(|l| l.starts_with("th, td {")).unwrap();
        assert!(cells.contains("overflow-wrap: anywhere;"), "{cells}");
        assert!(css.contains("img.thumb { display: block; max-width: 100%; height: auto; }"), "{css}");
        assert!(css.contains("h1, p { overflow-wrap: anywhere; }"), "{css}");
        assert!(html.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#));
        // One width class per column, the probability column among them, one cell per column in every row.
        let cols: Vec<&str> = html.split("<col class=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
        assert_eq!(cols, ["idx", "clip", "video", "truth", "prediction", "prob", "result", "details"]);
        for class in ["idx", "clip", "video", "prob", "result", "details"] {
            assert!(css.contains(&format!("col.{class} {{ width: ")), "width of {class}: {css}");
        }
        let heads = html.matches("<th data-type=").count();
        assert_eq!(heads, cols.len());
        assert!(html.contains(r#"<th data-type="num">probability</th>"#));
        let body = &html[html.find("<tbody>").unwrap()..html.find("</tbody>").unwrap()];
        let rows: Vec<&str> = body.split("<tr ").skip(1).collect();
        assert_eq!(rows.len(), 3);
        for row in &rows {
            assert_eq!(row.matches("<td").count(), cols.len(), "{row}");
        }
        assert!(rows[0].contains(r#"<td class="num" data-value="0.9">90.0%</td>"#), "{}", rows[0]);
        assert!(rows[1].contains(r#"<td class="num" data-value="0.6">60.0%</td>"#), "{}", rows[1]);
        assert!(rows[2].contains(r#"<td class="num" data-value="-1"></td>"#), "{}", rows[2]);
    }
}
