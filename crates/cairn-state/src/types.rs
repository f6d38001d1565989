//! Types every part shares: ids, snapshot kinds, mounts, usage.
//!
//! Ids are newtypes so a snapshot id can never be passed where a transaction id is meant.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A transaction id: assigned by the engine thread to every accepted mutation, strictly
/// increasing, journaled in the record. `TxId(0)` means "none".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TxId(pub u64);

impl TxId {
    pub const NONE: TxId = TxId(0);
    pub fn next(self) -> TxId {
        TxId(self.0 + 1)
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx{}", self.0)
    }
}

/// The on-disk identity of a snapshot: the name of its directory under `snapshots/`.
/// Assigned by the engine, never reused within a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// containerd's snapshot kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Read-write, not yet committed.
    Active,
    /// Read-only view of a parent; cannot be committed.
    View,
    /// Immutable; may be a parent.
    Committed,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Active => "Active",
            Kind::View => "View",
            Kind::Committed => "Committed",
        })
    }
}

/// A mount as data, in containerd's shape (`mount.Mount`): type, source, options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

/// Disk usage of a snapshot's own tree (not its parents').
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size_bytes: u64,
    pub inodes: u64,
}

/// Which driver a root was created with; recorded in the root and checked at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DriverKind {
    Vfs,
    Overlay,
    Block,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Vfs => "vfs",
            DriverKind::Overlay => "overlay",
            DriverKind::Block => "block",
        }
    }
}

impl From<DriverKind> for &'static str {
    fn from(kind: DriverKind) -> &'static str {
        kind.name()
    }
}
