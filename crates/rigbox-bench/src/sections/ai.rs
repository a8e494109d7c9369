//! Benchmark section: ai.

use crate::{BenchEnv, Section};

/// Runs the section.
pub async fn run(_env: &BenchEnv) -> anyhow::Result<Section> {
    Ok(Section::failed("ai", "this section is not written yet"))
}
