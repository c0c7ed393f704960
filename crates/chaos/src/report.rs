//! The report folder: `summary.json` and a self-contained `report.html` (inline SVG, no
//! scripts, no external files): verdicts, throughput and latency over time with the
//! nemesis windows shaded, the operations of each violation on a timeline, and what the run
//! could not test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::nemesis::{Kind, NemesisLog, Window};
use crate::proxy::LinkStats;
use crate::workload::{Outcome, Sample, TimelineOp, Verdict, WorkloadResult};

/// One node of the run, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: u64,
    /// Removed by the membership nemesis.
    pub removed: bool,
    /// Client address.
    pub client: String,
    /// Log file, relative to the report folder.
    pub log: String,
}

/// Operation totals.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OpTotals {
    /// All operations.
    pub total: u64,
    /// Completed, took effect.
    pub ok: u64,
    /// Completed, no effect.
    pub fail: u64,
    /// Outcome unknown.
    pub info: u64,
}

/// Everything `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// `pass`, `fail` or `unknown`.
    pub verdict: Verdict,
    /// True only if every checker passed.
    pub valid: bool,
    /// The command line that reproduces the run's schedule.
    pub command: String,
    /// Seed of every random choice.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Length of the fault phase, seconds.
    pub time_limit_s: u64,
    /// Clients per workload.
    pub concurrency: u64,
    /// Workloads run.
    pub workloads: Vec<String>,
    /// Nemeses enabled.
    pub nemeses: Vec<String>,
    /// How the nodes answered linearizable reads (flattened: `lease_reads`,
    /// `unsafe_stale_reads`, `unsafe_lease_never_expires`).
    #[serde(flatten)]
    pub reads: crate::cluster::ReadMode,
    /// Wall-clock start (UTC).
    pub started_at: String,
    /// Whole run, seconds.
    pub duration_s: f64,
    /// Operations by outcome.
    pub ops: OpTotals,
    /// Each workload's verdict.
    pub results: Vec<WorkloadResult>,
    /// The faults.
    pub nemesis: NemesisLog,
    /// Proxy counters per link `i->j`.
    pub proxy: BTreeMap<String, LinkStats>,
    /// Every node that ran.
    pub members: Vec<MemberInfo>,
    /// What the run could not test, and other notes.
    pub notes: Vec<String>,
}

/// What every report says about faults that real processes cannot be given here.
pub const NOT_TESTED: &str = "Lost unflushed writes are NOT tested against real processes: losing what the OS had not yet flushed at a crash needs dm-flakey or a FUSE file system, which this machine does not have (SIGKILL loses the process, not the page cache). That fault — with torn writes and bit flips — is injected by the deterministic simulator: `quorumkv sim --faults crash,bitflip`.";

/// Writes `summary.json` and `report.html` into `dir`.
pub fn write(dir: &Path, summary: &Summary, samples: &[Sample]) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json)?;
    std::fs::write(dir.join("report.html"), html(summary, samples))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn kind_color(kind: Kind) -> &'static str {
    match kind {
        Kind::Partition => "#f4a261",
        Kind::Net => "#e9c46a",
        Kind::Kill => "#e76f51",
        Kind::Pause => "#8ab17d",
        Kind::Transfer => "#2a9d8f",
        Kind::Membership => "#9b5de5",
        Kind::Skew => "#00bbf9",
    }
}

fn outcome_color(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "#2a9d8f",
        Outcome::Fail => "#f4a261",
        Outcome::Info => "#d62828",
    }
}

fn verdict_badge(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "<span class=pass>PASS</span>",
        Verdict::Fail => "<span class=fail>FAIL</span>",
        Verdict::Unknown => "<span class=unknown>UNKNOWN</span>",
    }
}

/// Geometry of one chart.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    t_max_ms: f64,
}

impl Frame {
    fn new(t_max_ms: f64) -> Self {
        Frame {
            width: 960.0,
            height: 260.0,
            left: 60.0,
            right: 20.0,
            top: 24.0,
            bottom: 30.0,
            t_max_ms,
        }
    }

    fn x(&self, t_ms: f64) -> f64 {
        let w = self.width - self.left - self.right;
        self.left + (t_ms / self.t_max_ms.max(1.0)).clamp(0.0, 1.0) * w
    }

    fn plot_bottom(&self) -> f64 {
        self.height - self.bottom
    }

    /// The frame, the time axis and the shaded nemesis windows.
    fn open(&self, out: &mut String, windows: &[Window], y_label: &str) {
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#,
            w = self.width,
            h = self.height
        );
        for win in windows {
            let (x0, x1) = (self.x(win.start_ms), self.x(win.end_ms));
            let _ = write!(
                out,
                r#"<rect x="{x0:.1}" y="{y}" width="{w:.1}" height="{h}" fill="{c}" fill-opacity="0.25"><title>{t}</title></rect><text x="{x0:.1}" y="{ty}" fill="{c}" font-size="10">{k}</text>"#,
                y = self.top,
                w = (x1 - x0).max(1.0),
                h = self.plot_bottom() - self.top,
                c = kind_color(win.kind),
                t = esc(&format!(
                    "{:.1}–{:.1} s: {}",
                    win.start_ms / 1e3,
                    win.end_ms / 1e3,
                    win.detail
                )),
                ty = self.top - 4.0,
                k = win.kind.name(),
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#333"/><text x="14" y="{my}" transform="rotate(-90 14 {my})" text-anchor="middle">{label}</text>"##,
            l = self.left,
            r = self.width - self.right,
            t = self.top,
            b = self.plot_bottom(),
            my = (self.top + self.plot_bottom()) / 2.0,
            label = esc(y_label),
        );
        let step_s = nice_step(self.t_max_ms / 1e3 / 10.0);
        let mut s = 0.0;
        while s * 1e3 <= self.t_max_ms {
            let x = self.x(s * 1e3);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{b2}" stroke="#333"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{s}s</text>"##,
                b = self.plot_bottom(),
                b2 = self.plot_bottom() + 4.0,
                ty = self.plot_bottom() + 16.0,
            );
            s += step_s;
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn throughput_chart(samples: &[Sample], windows: &[Window], t_max_ms: f64) -> String {
    let f = Frame::new(t_max_ms);
    let buckets = (t_max_ms / 1000.0).ceil().max(1.0) as usize;
    let mut counts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for o in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
        counts.insert(outcome_name(o), vec![0.0; buckets]);
    }
    for s in samples {
        let b = (((s.start_ms + s.latency_ms) / 1000.0) as usize).min(buckets - 1);
        if let Some(v) = counts.get_mut(outcome_name(s.outcome)) {
            v[b] += 1.0;
        }
    }
    let y_max = counts.values().flatten().copied().fold(1.0, f64::max) * 1.1;
    let y = |v: f64| f.plot_bottom() - v / y_max * (f.plot_bottom() - f.top);
    let mut out = String::new();
    f.open(&mut out, windows, "ops/s");
    let step = nice_step(y_max / 5.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y:.1}" text-anchor="end">{v}</text><line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/>"##,
            x = f.left - 4.0,
            y = y(v),
            l = f.left,
            r = f.width - f.right,
        );
        v += step;
    }
    for o in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
        let series = &counts[outcome_name(o)];
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:.1},{:.1}", f.x((i as f64 + 0.5) * 1000.0), y(*c)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            outcome_color(o),
            points.join(" ")
        );
    }
    legend(&mut out, &f);
    out.push_str("</svg>");
    out
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    }
}

fn legend(out: &mut String, f: &Frame) {
    for (i, o) in [Outcome::Ok, Outcome::Fail, Outcome::Info].into_iter().enumerate() {
        let x = f.width - f.right - 150.0 + i as f64 * 50.0;
        let _ = write!(
            out,
            r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{ty}">{n}</text>"#,
            y = f.top + 4.0,
            c = outcome_color(o),
            tx = x + 13.0,
            ty = f.top + 13.0,
            n = outcome_name(o),
        );
    }
}

fn latency_chart(samples: &[Sample], windows: &[Window], t_max_ms: f64) -> String {
    let f = Frame::new(t_max_ms);
    let max = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max);
    let (lo, hi) = (0.1f64.log10(), (max * 1.5).log10());
    let y = |ms: f64| {
        let v = (ms.max(0.1).log10() - lo) / (hi - lo);
        f.plot_bottom() - v * (f.plot_bottom() - f.top)
    };
    let mut out = String::new();
    f.open(&mut out, windows, "latency (ms, log)");
    let mut tick = 0.1;
    while tick <= max * 1.5 {
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y:.1}" text-anchor="end">{tick}</text><line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/>"##,
            x = f.left - 4.0,
            y = y(tick),
            l = f.left,
            r = f.width - f.right,
        );
        tick *= 10.0;
    }
    // At most about 6000 points keep the file small; failures and unknowns are all drawn.
    let stride = (samples.len() / 6000).max(1);
    for (i, s) in samples.iter().enumerate() {
        if s.outcome == Outcome::Ok && i % stride != 0 {
            continue;
        }
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}" fill-opacity="0.6"/>"#,
            f.x(s.start_ms),
            y(s.latency_ms),
            outcome_color(s.outcome)
        );
    }
    legend(&mut out, &f);
    out.push_str("</svg>");
    out
}

/// The operations of a violation, one row per process, bars from invoke to completion.
fn timeline_chart(ops: &[TimelineOp]) -> String {
    if ops.is_empty() {
        return String::new();
    }
    let mut rows: Vec<String> = Vec::new();
    for op in ops {
        if !rows.contains(&op.row) {
            rows.push(op.row.clone());
        }
    }
    let t0 = ops.iter().map(|o| o.start_ms).fold(f64::MAX, f64::min);
    let t1 = ops.iter().map(|o| o.end_ms.unwrap_or(o.start_ms)).fold(t0 + 1.0, f64::max);
    let span = (t1 - t0).max(1.0);
    let (left, width, row_h) = (70.0, 960.0, 26.0);
    let right_edge = width - 20.0;
    let x = |t: f64| left + (t - t0) / (span * 1.05) * (right_edge - left);
    let height = 30.0 + rows.len() as f64 * row_h + 20.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="4" y="{:.1}">{}</text>"#,
            30.0 + i as f64 * row_h + 14.0,
            esc(r)
        );
    }
    for op in ops {
        let row = rows.iter().position(|r| *r == op.row).unwrap_or(0);
        let y = 30.0 + row as f64 * row_h;
        let x0 = x(op.start_ms);
        let x1 = op.end_ms.map_or(right_edge, x).max(x0 + 2.0);
        let fill = if op.culprit {
            "#d62828"
        } else {
            match op.status.as_str() {
                "ok" => "#2a9d8f",
                "fail" => "#f4a261",
                _ => "#999",
            }
        };
        let dash = if op.end_ms.is_none() { r#" stroke-dasharray="4 2""# } else { "" };
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="18" fill="{fill}" fill-opacity="0.7" stroke="#333"{dash}><title>{t}</title></rect><text x="{tx:.1}" y="{ty:.1}">{l}</text>"##,
            w = x1 - x0,
            t = esc(&format!(
                "{} {} [{}] {:.3}–{} s",
                op.row,
                op.label,
                op.status,
                op.start_ms / 1e3,
                op.end_ms.map_or("never".to_string(), |e| format!("{:.3}", e / 1e3))
            )),
            tx = x0 + 3.0,
            ty = y + 13.0,
            l = esc(&op.label),
        );
    }
    let _ = write!(
        out,
        r#"<text x="{left}" y="{y}">{a:.3} s</text><text x="{right_edge}" y="{y}" text-anchor="end">{b:.3} s</text></svg>"#,
        y = height - 4.0,
        a = t0 / 1e3,
        b = (t0 + span * 1.05) / 1e3,
    );
    out
}

fn html(s: &Summary, samples: &[Sample]) -> String {
    let t_max = samples
        .iter()
        .map(|x| x.start_ms + x.latency_ms)
        .chain(s.nemesis.windows.iter().map(|w| w.end_ms))
        .fold(1000.0, f64::max);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>quorumkv check — {verdict}</title><style>
body{{font-family:sans-serif;margin:24px;max-width:1000px;color:#222}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}
.pass{{background:#2a9d8f;color:#fff;padding:2px 8px;border-radius:3px}}
.fail{{background:#d62828;color:#fff;padding:2px 8px;border-radius:3px}}
.unknown{{background:#999;color:#fff;padding:2px 8px;border-radius:3px}}
code{{background:#f4f4f4;padding:1px 4px}} .note{{background:#fff8e1;border-left:4px solid #e9c46a;padding:6px 10px;margin:8px 0}}
</style></head><body>"#,
        verdict = esc(&format!("{:?}", s.verdict))
    );
    let _ = write!(
        out,
        "<h1>quorumkv check {}</h1><p><code>{}</code></p><p>{} nodes, seed {}, fault phase {} s, {} clients per workload, run took {:.1} s, started {} UTC{}</p>",
        verdict_badge(s.verdict),
        esc(&s.command),
        s.nodes,
        s.seed,
        s.time_limit_s,
        s.concurrency,
        s.duration_s,
        esc(&s.started_at),
        s.reads.describe().map_or(String::new(), |(label, _)| format!(" — {label}"))
    );
    let _ = write!(
        out,
        "<p>Operations: {} ({} ok, {} fail, {} info = outcome unknown).</p>",
        s.ops.total, s.ops.ok, s.ops.fail, s.ops.info
    );
    out.push_str("<h2>Verdicts</h2><table><tr><th>workload</th><th>verdict</th><th>summary</th><th>history</th></tr>");
    for r in &s.results {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">{}</a></td></tr>",
            esc(&r.workload),
            verdict_badge(r.verdict),
            esc(&r.summary),
            esc(&r.history),
            esc(&r.history)
        );
    }
    out.push_str("</table>");
    out.push_str("<h2>Throughput</h2>");
    out.push_str(&throughput_chart(samples, &s.nemesis.windows, t_max));
    out.push_str("<h2>Latency</h2>");
    out.push_str(&latency_chart(samples, &s.nemesis.windows, t_max));
    out.push_str(
        "<h2>Faults</h2><table><tr><th>from</th><th>to</th><th>kind</th><th>what</th></tr>",
    );
    for w in &s.nemesis.windows {
        let _ = write!(
            out,
            "<tr><td>{:.1} s</td><td>{:.1} s</td><td style=\"color:{}\">{}</td><td>{}</td></tr>",
            w.start_ms / 1e3,
            w.end_ms / 1e3,
            kind_color(w.kind),
            w.kind.name(),
            esc(&w.detail)
        );
    }
    out.push_str("</table>");
    if !s.nemesis.skipped.is_empty() {
        out.push_str("<p>Not injected (the cluster was not in a state to):</p><ul>");
        for k in &s.nemesis.skipped {
            let _ = write!(out, "<li>{}</li>", esc(k));
        }
        out.push_str("</ul>");
    }
    for r in &s.results {
        if r.problems.is_empty() && r.timeline.is_empty() && r.notes.is_empty() {
            continue;
        }
        let _ = write!(out, "<h2>{} {}</h2>", esc(&r.workload), verdict_badge(r.verdict));
        for n in &r.notes {
            let _ = write!(out, "<div class=note>{}</div>", esc(n));
        }
        if !r.problems.is_empty() {
            out.push_str("<ul>");
            for p in &r.problems {
                let _ = write!(out, "<li>{}</li>", esc(p));
            }
            out.push_str("</ul>");
        }
        if !r.timeline.is_empty() {
            out.push_str("<p>The operations involved (red: the one that cannot be explained; dashed: never completed):</p>");
            out.push_str(&timeline_chart(&r.timeline));
        }
    }
    out.push_str("<h2>What this run did not test</h2>");
    for n in &s.notes {
        let _ = write!(out, "<div class=note>{}</div>", esc(n));
    }
    out.push_str(
        "<h2>Nodes</h2><table><tr><th>id</th><th>client</th><th>state</th><th>log</th></tr>",
    );
    for m in &s.members {
        let _ = write!(
            out,
            "<tr><td>n{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">{}</a></td></tr>",
            m.id,
            esc(&m.client),
            if m.removed { "removed" } else { "member" },
            esc(&m.log),
            esc(&m.log)
        );
    }
    out.push_str("</table><h2>Peer links (proxy counters)</h2><table><tr><th>link</th><th>connections</th><th>resets</th><th>forwarded</th><th>dropped</th><th>duplicated</th><th>delayed</th></tr>");
    for (link, st) in &s.proxy {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(link),
            st.connections,
            st.connections_reset,
            st.frames_forwarded,
            st.frames_dropped,
            st.frames_duplicated,
            st.frames_delayed
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_self_contained_and_shades_fault_windows() {
        let samples = vec![
            Sample { workload: "register", start_ms: 100.0, latency_ms: 3.0, outcome: Outcome::Ok },
            Sample {
                workload: "register",
                start_ms: 2500.0,
                latency_ms: 900.0,
                outcome: Outcome::Info,
            },
        ];
        let summary = Summary {
            verdict: Verdict::Fail,
            valid: false,
            command: "quorumkv check --seed 1".into(),
            seed: 1,
            nodes: 3,
            time_limit_s: 5,
            concurrency: 2,
            workloads: vec!["register".into()],
            nemeses: vec!["partition".into()],
            reads: crate::cluster::ReadMode { unsafe_stale_reads: true, ..Default::default() },
            started_at: "2025-01-01T00:00:00Z".into(),
            duration_s: 6.0,
            ops: OpTotals { total: 2, ok: 1, fail: 0, info: 1 },
            results: vec![WorkloadResult {
                workload: "register".into(),
                verdict: Verdict::Fail,
                summary: "NOT linearizable".into(),
                stats: serde_json::Value::Null,
                problems: vec!["read <1> after write 2".into()],
                timeline: vec![TimelineOp {
                    row: "p1".into(),
                    label: "read → 1".into(),
                    start_ms: 2000.0,
                    end_ms: None,
                    status: "ok".into(),
                    culprit: true,
                }],
                notes: Vec::new(),
                history: "register/history.jsonl".into(),
                ops: [1, 0, 1],
            }],
            nemesis: NemesisLog {
                windows: vec![Window {
                    kind: Kind::Partition,
                    detail: "isolate follower n2".into(),
                    start_ms: 2000.0,
                    end_ms: 4000.0,
                }],
                ..NemesisLog::default()
            },
            proxy: BTreeMap::new(),
            members: Vec::new(),
            notes: vec![NOT_TESTED.into()],
        };
        let page = html(&summary, &samples);
        assert!(page.contains("isolate follower n2"));
        assert!(page.contains("fill-opacity=\"0.25\""), "a shaded window");
        assert!(page.contains("read &lt;1&gt; after write 2"), "text is escaped");
        assert!(page.contains("stroke-dasharray"), "a never-completed operation is dashed");
        assert!(page.contains("dm-flakey"));
        assert!(!page.contains("<script"), "no scripts");
        assert!(!page.contains("src=\"http"), "no external resources");
    }
}
