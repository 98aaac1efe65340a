//! `results.json` and a self-contained HTML report: verdicts, counts, and a
//! latency-over-time plot with the fault windows shaded.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::checker::Verdict;
use crate::history::{History, Outcome};

/// A fault the nemesis injected, and when (ms since the start).
#[derive(Serialize, Clone, Debug)]
pub struct Fault {
    pub kind: String,
    pub target: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Serialize)]
pub struct Results<'a> {
    pub seed: u64,
    pub duration_ms: u64,
    pub valid: bool,
    pub verdicts: &'a [Verdict],
    pub sends: Counts,
    pub reads: Counts,
    /// Faults injected, by kind (a combined step counts for each of its kinds).
    pub faults_by_kind: BTreeMap<String, usize>,
    pub faults: &'a [Fault],
}

#[derive(Serialize, Default)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

fn count<'a>(it: impl Iterator<Item = &'a Outcome>) -> Counts {
    let mut c = Counts::default();
    for o in it {
        match o {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    c
}

pub fn results<'a>(seed: u64, duration_ms: u64, h: &History, verdicts: &'a [Verdict], faults: &'a [Fault]) -> Results<'a> {
    Results {
        seed,
        duration_ms,
        valid: verdicts.iter().all(|v| v.ok),
        verdicts,
        sends: count(h.sends.iter().map(|o| &o.outcome)),
        reads: count(h.reads.iter().map(|o| &o.outcome)),
        faults_by_kind: faults.iter().fold(BTreeMap::new(), |mut m, f| {
            *m.entry(base_kind(&f.kind).to_string()).or_insert(0) += 1;
            m
        }),
        faults,
    }
}

/// `partition-half (combined)` → `partition-half`.
fn base_kind(kind: &str) -> &str {
    kind.split(' ').next().unwrap_or(kind)
}

/// Shading per family of faults: process, network, cluster changes.
fn color(kind: &str) -> &'static str {
    match base_kind(kind) {
        "kill" | "kill-leader" | "pause" | "crash-all" => "#e63946",
        "membership" | "clock-skew" => "#2a9d8f",
        _ => "#457b9d",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The HTML report: no scripts, no external files.
pub fn html(r: &Results, h: &History) -> String {
    let (w, ht) = (900.0, 260.0);
    let t_max = r.duration_ms.max(1) as f64;
    let lat_max = h.sends.iter().filter(|o| o.outcome == Outcome::Ok).map(|o| o.complete_ms - o.invoke_ms).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| 40.0 + (t as f64 / t_max) * (w - 50.0);
    let y = |l: u64| ht - 20.0 - (l as f64 / lat_max) * (ht - 30.0);
    let mut svg = format!(r#"<svg width="{w}" height="{ht}" xmlns="http://www.w3.org/2000/svg" style="background:#fff">"#);
    for f in r.faults {
        svg += &format!(
            r##"<rect x="{:.1}" y="0" width="{:.1}" height="{}" fill="{}" opacity="0.18"><title>{} {}</title></rect>"##,
            x(f.start_ms),
            (x(f.end_ms) - x(f.start_ms)).max(1.0),
            ht - 20.0,
            color(&f.kind),
            esc(&f.kind),
            esc(&f.target)
        );
    }
    for o in &h.sends {
        let color = match o.outcome {
            Outcome::Ok => "#1d3557",
            Outcome::Fail => "#e9c46a",
            Outcome::Unknown => "#e63946",
        };
        let lat = (o.complete_ms - o.invoke_ms).min(lat_max as u64);
        svg += &format!(r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{color}"/>"#, x(o.invoke_ms), y(lat));
    }
    svg += &format!(
        r##"<line x1="40" y1="{b}" x2="{w}" y2="{b}" stroke="#888"/><text x="2" y="12" font-size="11">{lat_max:.0} ms</text><text x="{w2}" y="{b2}" font-size="11">{t:.1} s</text></svg>"##,
        b = ht - 20.0,
        w2 = w - 40.0,
        b2 = ht - 5.0,
        t = t_max / 1000.0
    );
    let rows: String = r
        .verdicts
        .iter()
        .map(|v| {
            let detail: String = v.anomalies.iter().take(20).map(|a| format!("<li>{}</li>", esc(a))).collect();
            format!(
                "<tr class='{}'><td>{}</td><td>{}</td><td><ul>{detail}</ul></td></tr>",
                if v.ok { "ok" } else { "bad" },
                esc(v.property),
                if v.ok { "holds" } else { "VIOLATED" }
            )
        })
        .collect();
    let by_kind: String = r.faults_by_kind.iter().map(|(k, n)| format!("{} ×{n}", esc(k))).collect::<Vec<_>>().join(", ");
    let faults: String = r.faults.iter().map(|f| format!("<li>{} {} at {} ms for {} ms</li>", esc(&f.kind), esc(&f.target), f.start_ms, f.end_ms - f.start_ms)).collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Chorus fault-injection report</title>
<style>body{{font:14px system-ui;margin:2em}}td{{padding:.3em .8em;border-bottom:1px solid #ddd;vertical-align:top}}.ok td:nth-child(2){{color:#2a9d8f}}.bad td:nth-child(2){{color:#c1121f;font-weight:bold}}</style></head>
<body><h1>Chorus fault-injection run: {}</h1>
<p>seed <b>{}</b> · {:.1} s · sends ok {} / fail {} / unknown {} · reads ok {} / fail {} / unknown {} · {} faults</p>
<table>{rows}</table>
<h2>Send latency over time</h2><p>dots: sends (blue ok, red unknown, yellow fail); shaded: fault windows (red process, blue network, green membership and clock; hover for details)</p>{svg}
<h2>Faults</h2><p>{by_kind}</p><ul>{faults}</ul></body></html>"#,
        if r.valid { "valid" } else { "INVALID" },
        r.seed,
        r.duration_ms as f64 / 1000.0,
        r.sends.ok,
        r.sends.fail,
        r.sends.unknown,
        r.reads.ok,
        r.reads.fail,
        r.reads.unknown,
        r.faults.len()
    )
}
