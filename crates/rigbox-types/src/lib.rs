//! Types shared by every Rigbox component: workspace ids and names, the
//! workspace lifecycle state machine, and resource bounds. No I/O.
#![warn(missing_docs)]

pub mod ids;
pub mod state;

pub use ids::{new_workspace_id, valid_workspace_id, validate_name, NameError};
pub use state::{Event, IllegalTransition, WorkspaceState};
