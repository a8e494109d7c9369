//! The workspace lifecycle as a state machine.
//!
//! ```text
//!  provisioned --start--> starting --booted--> running --stop--> stopping --halted--> stopped
//!       ^                   |  ^                 |  |                                  |
//!       |                   |  +----resume----- paused <--pause                        |
//!       |          boot_failed/crash             |                                     |
//!       |                   v                    |                                     |
//!       |                failed --retry--> provisioning --provisioned--> starting      |
//!       +--------------------------------------------------------------- start -------+
//!  any state but deleting --delete--> deleting
//! ```
//! `cancel` stops a workspace that is provisioning or starting. An event that
//! is not allowed in the current state is an [`IllegalTransition`], never a
//! panic; the API maps it to 409 (or 400 where the reference says so).

use serde::{Deserialize, Serialize};

/// Lifecycle states (the reference's `VmStatus`, plus `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceState {
    /// Created: row and disk exist, never booted (or not since creation).
    Provisioned,
    /// Being placed or prepared before booting (retry).
    Provisioning,
    /// Booting: the VM runs, the guest agent does not answer yet.
    Starting,
    /// The guest agent answers.
    Running,
    /// Memory and state saved, VM process gone.
    Paused,
    /// Shutting down.
    Stopping,
    /// Off; the disk is kept.
    Stopped,
    /// Being destroyed.
    Deleting,
    /// Something went wrong; see the failure.
    Failed,
}

/// What happens to a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A user asks to boot.
    Start,
    /// Placement/preparation finished.
    Provisioned,
    /// The guest agent answered.
    Booted,
    /// Booting failed.
    BootFailed,
    /// The VM died on its own.
    Crashed,
    /// A user asks to stop.
    Stop,
    /// The VM is gone after a stop.
    Halted,
    /// A user aborts a boot.
    Cancel,
    /// A user retries after a failure.
    Retry,
    /// A user asks to pause.
    Pause,
    /// The memory snapshot is written and the VM process is gone.
    PauseDone,
    /// A user asks to resume.
    Resume,
    /// Restoring the saved memory failed; the saved state is kept.
    ResumeFailed,
    /// A live snapshot was restored into a workspace that is not running.
    RestoreLive,
    /// A user deletes the workspace.
    Delete,
}

/// An event that is not allowed in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a workspace that is {state}")]
pub struct IllegalTransition {
    /// The current state.
    pub state: WorkspaceState,
    /// The refused event.
    pub event: Event,
}

impl std::fmt::Display for WorkspaceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Event::Start => "start",
            Event::Provisioned => "finish provisioning",
            Event::Booted => "finish booting",
            Event::BootFailed => "fail booting",
            Event::Crashed => "crash",
            Event::Stop => "stop",
            Event::Halted => "finish stopping",
            Event::Cancel => "cancel",
            Event::Retry => "retry",
            Event::Pause => "pause",
            Event::PauseDone => "finish pausing",
            Event::Resume => "resume",
            Event::ResumeFailed => "fail resuming",
            Event::RestoreLive => "restore a live snapshot into",
            Event::Delete => "delete",
        })
    }
}

impl WorkspaceState {
    /// Every state.
    pub const ALL: [WorkspaceState; 9] = [
        Self::Provisioned,
        Self::Provisioning,
        Self::Starting,
        Self::Running,
        Self::Paused,
        Self::Stopping,
        Self::Stopped,
        Self::Deleting,
        Self::Failed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioned => "provisioned",
            Self::Provisioning => "provisioning",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a VM process is (or may be) alive in this state.
    pub fn has_vm(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }

    /// Whether the state is transient (work is in progress).
    pub fn is_busy(self) -> bool {
        matches!(self, Self::Provisioning | Self::Starting | Self::Stopping | Self::Deleting)
    }

    /// Applies `event`, returning the next state.
    pub fn apply(self, event: Event) -> Result<WorkspaceState, IllegalTransition> {
        use Event as E;
        use WorkspaceState as S;
        let next = match (self, event) {
            (S::Provisioned | S::Stopped, E::Start) => S::Starting,
            (S::Provisioning, E::Provisioned) => S::Starting,
            (S::Starting, E::Booted) => S::Running,
            (S::Provisioning | S::Starting, E::BootFailed) => S::Failed,
            (S::Starting | S::Running | S::Stopping, E::Crashed) => S::Failed,
            (S::Running, E::Stop) => S::Stopping,
            (S::Paused, E::Stop) => S::Stopped,
            (S::Stopping, E::Halted) => S::Stopped,
            (S::Provisioning | S::Starting, E::Cancel) => S::Stopping,
            (S::Failed, E::Retry) => S::Provisioning,
            (S::Running, E::Pause) => S::Paused,
            (S::Paused, E::PauseDone) => S::Paused,
            (S::Paused, E::Resume) => S::Starting,
            (S::Starting, E::ResumeFailed) => S::Paused,
            (S::Provisioned | S::Stopped | S::Failed | S::Paused, E::RestoreLive) => S::Paused,
            (s, E::Delete) if s != S::Deleting => S::Deleting,
            (state, event) => return Err(IllegalTransition { state, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use WorkspaceState as S;

    #[test]
    fn the_normal_lifecycle() {
        let mut s = S::Provisioned;
        for e in [E::Start, E::Booted, E::Stop, E::Halted, E::Start, E::Booted, E::Delete] {
            s = s.apply(e).unwrap();
        }
        assert_eq!(s, S::Deleting);
    }

    #[test]
    fn illegal_events_are_errors_not_panics() {
        let err = S::Running.apply(E::Start).unwrap_err();
        assert_eq!(err.to_string(), "cannot start a workspace that is running");
        assert!(S::Stopped.apply(E::Stop).is_err());
        assert!(S::Running.apply(E::Cancel).is_err());
        assert!(S::Running.apply(E::Retry).is_err());
        assert!(S::Deleting.apply(E::Delete).is_err());
        // Exhaustive: every pair either moves or errs.
        for s in S::ALL {
            for e in [E::Start, E::Provisioned, E::Booted, E::BootFailed, E::Crashed, E::Stop, E::Halted, E::Cancel, E::Retry, E::Pause, E::PauseDone, E::Resume, E::ResumeFailed, E::RestoreLive, E::Delete] {
                let _ = s.apply(e);
            }
        }
    }

    #[test]
    fn failure_and_recovery() {
        assert_eq!(S::Starting.apply(E::BootFailed).unwrap(), S::Failed);
        assert_eq!(S::Failed.apply(E::Retry).unwrap(), S::Provisioning);
        assert_eq!(S::Provisioning.apply(E::Provisioned).unwrap(), S::Starting);
        assert_eq!(S::Starting.apply(E::Cancel).unwrap(), S::Stopping);
        assert_eq!(S::Running.apply(E::Crashed).unwrap(), S::Failed);
        assert_eq!(S::Running.apply(E::Pause).unwrap(), S::Paused);
        assert_eq!(S::Paused.apply(E::Resume).unwrap(), S::Starting);
    }

    #[test]
    fn wire_names_round_trip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
    }
}
