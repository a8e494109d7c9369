//! Benchmark section: quickdeploy.

use crate::{BenchEnv, Section};

/// Runs the section.
pub async fn run(_env: &BenchEnv) -> anyhow::Result<Section> {
    Ok(Section::failed("quickdeploy", "this section is not written yet"))
}
