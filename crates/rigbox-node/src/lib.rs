//! The Rigbox node agent: the data plane.
//!
//! The control plane decides *where* a workspace runs and records *that* it
//! runs; the node agent owns *how*: the VMM process ([`rigbox_vmm`]), the
//! network slot ([`rigbox_netns`]), the root disk and the serial console, and
//! the lifecycle state machine of each workspace on this host. It holds no
//! platform secrets and no user API keys; it is driven only through its
//! internal API ([`server`], contract in `rigbox-node-api`) with a node token.
#![warn(missing_docs)]

pub mod aiproxy;
pub mod disk;
pub mod error;
pub mod guest;
pub mod metrics;
pub mod node;
pub mod pkgproxy;
pub mod procstat;
pub mod server;
mod slotsrv;
pub mod snapshot;
pub mod warm;
pub mod wsio;

pub use error::NodeError;
pub use node::{Node, NodeConfig, Record};
