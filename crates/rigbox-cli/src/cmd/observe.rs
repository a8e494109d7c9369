//! `rig workspace metrics|logs` (filled in with metrics and logs).

use crate::ctx::{not_yet, Ctx};
use rigbox_client::Client;

pub async fn metrics(_ctx: &Ctx, _client: &Client, _ws: &str, _watch: bool) -> anyhow::Result<()> {
    not_yet("metrics")
}

pub async fn logs(_ctx: &Ctx, _client: &Client, _ws: &str, _follow: bool, _lines: u32) -> anyhow::Result<()> {
    not_yet("logs")
}
