//! Reference-counted mounts, as Docker's aufs driver kept them (`Get` mounts on the first
//! reference, `Put` unmounts on the last), but journaled: the state holds, per mount target,
//! the snapshot mounted there and how many references hold it.
//!
//! Only the first reference (the mount(2)) and the last release (the umount(2)) touch the
//! kernel, and each is a two-step transaction: `Mount` / `Unmount` begins it (the target is busy
//! meanwhile), `Complete` records that it happened, `Abort` that it did not. A reference in
//! between is one record and no effect. Recovery decides a pending step by asking the kernel
//! (`/proc/self/mountinfo`): a mount there completes a pending mount and aborts a pending
//! unmount, no mount does the opposite; a counted target with nothing mounted is dropped with
//! `MountGone` (a reboot, or an unmount behind cairn's back). So no crash leaves a mount counted
//! that does not exist, or one of ours that nothing counts.

use super::draft::{Draft, Read};
use super::{Effect, Invalid, Kind, Pending, Precondition, StateError};
use crate::types::TxId;
use serde::{Deserialize, Serialize};

/// The longest mount target path (Linux's PATH_MAX).
pub const MAX_TARGET_BYTES: usize = 4096;
/// Targets counted at once, at most (each is a live mount; the kernel's default
/// `fs.mount-max` is 100000 for everything in the namespace).
pub const MAX_MOUNTS: usize = 65536;

/// A live, counted mount: snapshot `key` is mounted on the target (the map's key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    pub key: String,
    /// References held; at least 1 (the entry is removed with the last).
    pub count: u64,
}

/// A target as the engine records it: absolute, no NUL, at most [`MAX_TARGET_BYTES`].
pub fn validate_target(target: &str) -> Result<(), StateError> {
    let bad = !target.starts_with('/') || target.contains('\0') || target.contains("//");
    if bad {
        return Err(StateError::InvalidArgument {
            reason: Invalid::BadTarget {
                target: target.chars().take(64).collect(),
            },
        });
    }
    super::limits::check_len("target", target, MAX_TARGET_BYTES)
}

fn target_busy(target: &str) -> StateError {
    StateError::FailedPrecondition {
        key: target.to_owned(),
        reason: Precondition::Busy,
    }
}

impl super::State {
    /// Panics unless every counted mount holds at least one reference on an Active or View
    /// snapshot that exists: a count on nothing is a mount that would never be released.
    pub fn assert_mounts(&self) {
        for (target, m) in &self.mounts {
            assert!(
                m.count >= 1,
                "invariant: mount {target} counts no reference"
            );
            let kind = self.snapshots.get(&m.key).map(|s| s.kind);
            assert!(
                matches!(kind, Some(Kind::Active | Kind::View)),
                "invariant: mount {target} is of {}, which is {kind:?}",
                m.key
            );
        }
    }
}

impl Draft<'_> {
    /// A pending mount or unmount of `target`, if any.
    fn target_pending(&self, target: &str) -> bool {
        self.pending.values().any(|p| match p {
            Pending::Mount { target: t, .. } | Pending::Unmount { target: t } => t == target,
            _ => false,
        })
    }

    pub(super) fn mount(
        &mut self,
        txid: TxId,
        key: &str,
        target: &str,
    ) -> Result<Vec<Effect>, StateError> {
        validate_target(target)?;
        let snap = self.get(key)?;
        if snap.kind == Kind::Committed {
            return Err(StateError::FailedPrecondition {
                key: key.to_owned(),
                reason: Precondition::NoMounts,
            });
        }
        if self.is_busy(key) {
            return Err(StateError::FailedPrecondition {
                key: key.to_owned(),
                reason: Precondition::Busy,
            });
        }
        if self.target_pending(target) {
            return Err(target_busy(target));
        }
        if let Some(m) = self.mounts.get_mut(target) {
            if m.key != key {
                return Err(StateError::FailedPrecondition {
                    key: target.to_owned(),
                    reason: Precondition::TargetHeld { key: m.key.clone() },
                });
            }
            m.count = m.count.checked_add(1).ok_or_else(|| target_busy(target))?;
            return Ok(Vec::new());
        }
        let counted = self.mounts.iter().count()
            + self
                .pending
                .values()
                .filter(|p| matches!(p, Pending::Mount { .. }))
                .count();
        if counted >= MAX_MOUNTS {
            return Err(StateError::InvalidArgument {
                reason: Invalid::TooManyMounts { max: MAX_MOUNTS },
            });
        }
        self.pending.insert(
            txid,
            Pending::Mount {
                key: key.to_owned(),
                target: target.to_owned(),
            },
        );
        Ok(vec![Effect::Mount {
            txid,
            key: key.to_owned(),
            target: target.to_owned(),
        }])
    }

    pub(super) fn unmount(&mut self, txid: TxId, target: &str) -> Result<Vec<Effect>, StateError> {
        if self.target_pending(target) {
            return Err(target_busy(target));
        }
        let m = self
            .mounts
            .get_mut(target)
            .ok_or_else(|| StateError::NotMounted {
                target: target.to_owned(),
            })?;
        if m.count > 1 {
            m.count -= 1;
            return Ok(Vec::new());
        }
        self.pending.insert(
            txid,
            Pending::Unmount {
                target: target.to_owned(),
            },
        );
        Ok(vec![Effect::Unmount {
            txid,
            target: target.to_owned(),
        }])
    }

    pub(super) fn mount_gone(&mut self, target: &str) -> Result<Vec<Effect>, StateError> {
        if self.target_pending(target) {
            return Err(target_busy(target));
        }
        self.mounts
            .remove(target)
            .ok_or_else(|| StateError::NotMounted {
                target: target.to_owned(),
            })?;
        Ok(Vec::new())
    }

    /// Refuses to remove, commit or drop `key` while anything is mounted from it.
    pub(super) fn check_unmounted(&self, key: &str) -> Result<(), StateError> {
        match self.mount_of(key) {
            Some(target) => Err(StateError::FailedPrecondition {
                key: key.to_owned(),
                reason: Precondition::Mounted {
                    target: target.to_owned(),
                },
            }),
            None => Ok(()),
        }
    }
}
