//! Command groups, one module each.

pub mod account;
pub mod ai;
pub mod app;
pub mod automation;
pub mod exec;
pub mod snapshot;
pub mod ssh;
pub mod workspace;
pub mod observe;
