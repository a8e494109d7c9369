//! The printed report.

use serde::Serialize;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The platform's number.
    pub value: String,
    /// The baseline doing the same work directly, if any.
    pub baseline: Option<String>,
    /// value / baseline.
    pub ratio: Option<f64>,
}

impl Row {
    /// A row without baseline.
    pub fn new(what: impl Into<String>, value: impl Into<String>) -> Self {
        Row { what: what.into(), value: value.into(), baseline: None, ratio: None }
    }

    /// A row of durations in ms with a baseline.
    pub fn ms(what: impl Into<String>, value_ms: f64, baseline_ms: Option<f64>) -> Self {
        Row {
            what: what.into(),
            value: format!("{value_ms:.1} ms"),
            baseline: baseline_ms.map(|b| format!("{b:.1} ms")),
            ratio: baseline_ms.filter(|b| *b > 0.0).map(|b| value_ms / b),
        }
    }
}

/// A group of measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Title.
    pub title: String,
    /// Rows.
    pub rows: Vec<Row>,
    /// Notes (method, environment, caveats).
    pub notes: Vec<String>,
}

impl Section {
    /// A section that could not run.
    pub fn failed(name: &str, why: &str) -> Self {
        Section { title: name.into(), rows: vec![], notes: vec![format!("not measured: {why}")] }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Sections in order.
    pub sections: Vec<Section>,
}

/// Median of samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// A percentile (0..=100) of samples.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Rigbox benchmark report")?;
        for s in &self.sections {
            writeln!(f, "\n== {} ==", s.title)?;
            let w = s.rows.iter().map(|r| r.what.len()).max().unwrap_or(10).max(10);
            if !s.rows.is_empty() {
                writeln!(f, "{:<w$}  {:>14}  {:>14}  {:>7}", "measurement", "platform", "baseline", "ratio")?;
            }
            for r in &s.rows {
                writeln!(
                    f,
                    "{:<w$}  {:>14}  {:>14}  {:>7}",
                    r.what,
                    r.value,
                    r.baseline.clone().unwrap_or_else(|| "-".into()),
                    r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
                )?;
            }
            for n in &s.notes {
                writeln!(f, "  note: {n}")?;
            }
        }
        Ok(())
    }
}
