//! Reference-counted mounts in the pure state machine: what each record counts, which effect
//! it asks for, and that every refusal leaves the state as it was.

#![allow(clippy::unwrap_used)]

use cairn_state::types::{Kind, SnapshotId, TxId};
use cairn_state::{Effect, Labels, Op, Pending, Precondition, Record, State, StateError};

struct Machine {
    state: State,
}

impl Machine {
    fn new() -> Machine {
        let mut m = Machine {
            state: State::new(),
        };
        for (key, parent, kind) in [
            ("base-a", None, Kind::Active),
            ("a", Some("base"), Kind::Active),
            ("v", Some("base"), Kind::View),
        ] {
            let id = SnapshotId(m.state.next_id);
            let txid = m.next();
            m.ok(Op::BeginCreate {
                key: key.into(),
                parent: parent.map(Into::into),
                kind,
                id,
                labels: Labels::new(),
                time_ns: 1,
            });
            m.ok(complete(txid));
            if key == "base-a" {
                let txid = m.next();
                m.ok(Op::BeginCommit {
                    key: "base-a".into(),
                    name: "base".into(),
                    labels: Labels::new(),
                    time_ns: 2,
                });
                m.ok(complete(txid));
            }
        }
        m
    }

    fn next(&self) -> TxId {
        self.state.last_txid.next()
    }

    fn apply(&mut self, op: Op) -> Result<Vec<Effect>, StateError> {
        let record = Record {
            txid: self.next(),
            op,
        };
        self.state.apply(&record).map(|a| a.effects)
    }

    fn ok(&mut self, op: Op) -> Vec<Effect> {
        self.apply(op).unwrap()
    }

    /// Refused, and the state is exactly what it was.
    fn refused(&mut self, op: Op) -> StateError {
        let before = self.state.clone();
        let e = self.apply(op).unwrap_err();
        assert_eq!(self.state, before, "a refusal changes nothing");
        e
    }

    fn count(&self, target: &str) -> u64 {
        self.state.mounts.get(target).map_or(0, |m| m.count)
    }
}

fn complete(of: TxId) -> Op {
    Op::Complete {
        of,
        usage: None,
        digest: None,
    }
}

fn mount(key: &str, target: &str) -> Op {
    Op::Mount {
        key: key.into(),
        target: target.into(),
    }
}

fn unmount(target: &str) -> Op {
    Op::Unmount {
        target: target.into(),
    }
}

fn precondition(e: &StateError) -> &Precondition {
    match e {
        StateError::FailedPrecondition { reason, .. } => reason,
        other => panic!("not a failed precondition: {other}"),
    }
}

#[test]
fn the_first_reference_mounts_later_ones_count_the_last_release_unmounts() {
    let mut m = Machine::new();
    let first = m.next();
    assert_eq!(
        m.ok(mount("a", "/mnt/a")),
        [Effect::Mount {
            txid: first,
            key: "a".into(),
            target: "/mnt/a".into()
        }]
    );
    assert!(matches!(
        m.state.pending.get(&first),
        Some(Pending::Mount { .. })
    ));
    assert_eq!(m.count("/mnt/a"), 0, "counted once the mount is done");
    // While the mount is in flight the target is busy and the snapshot mounted.
    let e = m.refused(mount("a", "/mnt/a"));
    assert_eq!(precondition(&e), &Precondition::Busy);
    let e = m.refused(Op::Remove { key: "a".into() });
    assert!(matches!(precondition(&e), Precondition::Mounted { target } if target == "/mnt/a"));
    m.ok(complete(first));
    assert_eq!(m.count("/mnt/a"), 1);
    assert!(
        m.ok(mount("a", "/mnt/a")).is_empty(),
        "a second reference only counts"
    );
    assert_eq!(m.count("/mnt/a"), 2);
    // Refusals: another snapshot on the target, a committed snapshot, a relative target,
    // commit and remove of a mounted snapshot, an unmount of nothing.
    let e = m.refused(mount("v", "/mnt/a"));
    assert!(matches!(precondition(&e), Precondition::TargetHeld { key } if key == "a"));
    let e = m.refused(mount("base", "/mnt/b"));
    assert_eq!(precondition(&e), &Precondition::NoMounts);
    assert!(matches!(
        m.refused(mount("v", "mnt/b")),
        StateError::InvalidArgument { .. }
    ));
    assert!(matches!(
        m.refused(mount("nope", "/mnt/b")),
        StateError::NotFound { .. }
    ));
    let e = m.refused(Op::BeginCommit {
        key: "a".into(),
        name: "a-c".into(),
        labels: Labels::new(),
        time_ns: 3,
    });
    assert!(matches!(precondition(&e), Precondition::Mounted { .. }));
    assert!(matches!(
        m.refused(unmount("/mnt/b")),
        StateError::NotMounted { .. }
    ));
    // A view mounts as well, on its own target.
    let v = m.next();
    m.ok(mount("v", "/mnt/v"));
    m.ok(Op::Abort { of: v });
    assert_eq!(m.count("/mnt/v"), 0, "an aborted mount counts nothing");

    assert!(m.ok(unmount("/mnt/a")).is_empty());
    assert_eq!(m.count("/mnt/a"), 1);
    let last = m.next();
    assert_eq!(
        m.ok(unmount("/mnt/a")),
        [Effect::Unmount {
            txid: last,
            target: "/mnt/a".into()
        }]
    );
    let e = m.refused(Op::Remove { key: "a".into() });
    assert!(
        matches!(precondition(&e), Precondition::Mounted { .. }),
        "until the unmount is done"
    );
    let e = m.refused(unmount("/mnt/a"));
    assert_eq!(precondition(&e), &Precondition::Busy);
    // An aborted unmount keeps the mount and its reference.
    m.ok(Op::Abort { of: last });
    assert_eq!(m.count("/mnt/a"), 1);
    let last = m.next();
    m.ok(unmount("/mnt/a"));
    m.ok(complete(last));
    assert!(m.state.mounts.is_empty());
    assert_eq!(
        m.ok(Op::Remove { key: "a".into() }).len(),
        1,
        "removable again"
    );
}

#[test]
fn mount_gone_drops_every_reference_of_a_target() {
    let mut m = Machine::new();
    let first = m.next();
    m.ok(mount("a", "/mnt/a"));
    m.ok(complete(first));
    m.ok(mount("a", "/mnt/a"));
    assert_eq!(m.count("/mnt/a"), 2);
    m.ok(Op::MountGone {
        target: "/mnt/a".into(),
    });
    assert!(m.state.mounts.is_empty());
    assert!(matches!(
        m.refused(Op::MountGone {
            target: "/mnt/a".into()
        }),
        StateError::NotMounted { .. }
    ));
    m.ok(Op::Remove { key: "a".into() });
}
