use super::*;

struct Machine {
    state: State,
    txid: u64,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            state: State::new(),
            txid: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Result<(TxId, Vec<Effect>), StateError> {
        let txid = TxId(self.txid + 1);
        let before = self.state.clone();
        let result = self.state.apply(&Record { txid, op });
        match &result {
            Ok(_) => self.txid += 1,
            Err(_) => assert_eq!(self.state, before, "a refused record changed the state"),
        }
        result.map(|e| (txid, e))
    }

    fn create(&mut self, key: &str, parent: Option<&str>, kind: Kind) -> Result<TxId, StateError> {
        let id = SnapshotId(self.state.next_id);
        let (txid, _) = self.apply(Op::BeginCreate {
            key: key.into(),
            parent: parent.map(Into::into),
            kind,
            id,
            labels: Labels::new(),
            time_ns: 10,
        })?;
        self.apply(Op::Complete {
            of: txid,
            usage: None,
        })
        .map(|_| txid)
    }

    fn commit(&mut self, name: &str, key: &str) -> Result<(), StateError> {
        let (txid, _) = self.apply(Op::BeginCommit {
            key: key.into(),
            name: name.into(),
            labels: Labels::new(),
            time_ns: 20,
        })?;
        self.apply(Op::Complete {
            of: txid,
            usage: Some(Usage {
                size_bytes: 1,
                inodes: 1,
            }),
        })?;
        Ok(())
    }
}

#[test]
fn prepare_commit_view_remove_follow_containerd() {
    let mut m = Machine::new();
    m.create("a", None, Kind::Active).expect("prepare a");
    assert_eq!(m.state.get("a").expect("a").kind, Kind::Active);
    assert!(matches!(
        m.create("a", None, Kind::Active),
        Err(StateError::AlreadyExists { .. })
    ));
    assert!(matches!(
        m.create("b", Some("a"), Kind::Active),
        Err(StateError::InvalidArgument {
            reason: Invalid::ParentNotCommitted { .. }
        })
    ));
    assert!(matches!(
        m.create("b", Some("nope"), Kind::Active),
        Err(StateError::NotFound { .. })
    ));
    m.create("a2", None, Kind::Active).expect("prepare a2");
    // containerd checks the parent before the key.
    assert!(matches!(
        m.create("a2", Some("nope"), Kind::Active),
        Err(StateError::NotFound { .. })
    ));
    assert!(matches!(
        m.create("a2", Some("a"), Kind::Active),
        Err(StateError::InvalidArgument {
            reason: Invalid::ParentNotCommitted { .. }
        })
    ));
    m.commit("base", "a").expect("commit");
    assert!(m.state.get("a").is_err());
    let base = m.state.get("base").expect("base");
    assert_eq!(
        (base.created_ns, base.updated_ns),
        (20, 20),
        "a commit's times are new and equal"
    );
    let base = m.state.get("base").expect("base");
    assert_eq!((base.kind, base.usage.is_some()), (Kind::Committed, true));
    m.create("v", Some("base"), Kind::View).expect("view");
    assert!(matches!(
        m.commit("v2", "v"),
        Err(StateError::FailedPrecondition {
            reason: Precondition::NotActive,
            ..
        })
    ));
    assert!(matches!(
        m.commit("x", "base"),
        Err(StateError::FailedPrecondition {
            reason: Precondition::NotActive,
            ..
        })
    ));
    m.create("c", Some("base"), Kind::Active).expect("child");
    assert!(matches!(
        m.commit("base", "c"),
        Err(StateError::AlreadyExists { .. })
    ));
    assert!(matches!(
        m.commit("n", "missing"),
        Err(StateError::NotFound { .. })
    ));
    assert!(matches!(
        m.apply(Op::Remove { key: "base".into() }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::HasChildren,
            ..
        })
    ));
    assert_eq!(m.state.parent_ids("c").expect("chain"), vec![base_id(&m)]);
    m.apply(Op::Remove { key: "v".into() }).expect("rm v");
    let (_, effects) = m.apply(Op::Remove { key: "c".into() }).expect("rm c");
    assert!(matches!(effects[..], [Effect::Delete { .. }]));
    m.apply(Op::Remove { key: "base".into() }).expect("rm base");
    m.apply(Op::Remove { key: "a2".into() }).expect("rm a2");
    assert!(m.state.snapshots.is_empty());
}

fn base_id(m: &Machine) -> SnapshotId {
    m.state.get("base").expect("base").id
}

#[test]
fn pending_operations_reserve_keys_and_block_removal() {
    let mut m = Machine::new();
    let (t1, effects) = m
        .apply(Op::BeginCreate {
            key: "k".into(),
            parent: None,
            kind: Kind::Active,
            id: SnapshotId(1),
            labels: Labels::new(),
            time_ns: 1,
        })
        .expect("begin");
    assert_eq!(
        effects,
        vec![Effect::Stage {
            txid: t1,
            kind: Kind::Active,
            parent: None
        }]
    );
    assert!(m.state.get("k").is_err(), "not visible before it completes");
    assert!(matches!(
        m.create("k", None, Kind::View),
        Err(StateError::AlreadyExists { .. })
    ));
    let (_, effects) = m.apply(Op::Abort { of: t1 }).expect("abort");
    assert_eq!(effects, vec![Effect::Discard { txid: t1 }]);
    assert!(matches!(
        m.apply(Op::Complete {
            of: t1,
            usage: None
        }),
        Err(StateError::NotPending { .. })
    ));
    m.create("k", None, Kind::Active).expect("key free again");
    let (tc, effects) = m
        .apply(Op::BeginCommit {
            key: "k".into(),
            name: "done".into(),
            labels: Labels::new(),
            time_ns: 3,
        })
        .expect("begin commit");
    assert!(matches!(effects[..], [Effect::Seal { .. }]));
    assert!(matches!(
        m.apply(Op::Remove { key: "k".into() }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::Busy,
            ..
        })
    ));
    assert!(matches!(
        m.create("done", None, Kind::Active),
        Err(StateError::AlreadyExists { .. })
    ));
    m.apply(Op::Abort { of: tc }).expect("abort commit");
    assert_eq!(m.state.get("k").expect("still active").kind, Kind::Active);
}

#[test]
fn labels_and_keys_are_validated() {
    let mut m = Machine::new();
    assert!(matches!(
        m.create("", None, Kind::Active),
        Err(StateError::InvalidArgument {
            reason: Invalid::EmptyKey
        })
    ));
    assert!(matches!(
        m.create("c", None, Kind::Committed),
        Err(StateError::InvalidArgument {
            reason: Invalid::BadKind { .. }
        })
    ));
    m.create("a", None, Kind::Active).expect("a");
    let mut labels = Labels::new();
    labels.insert("k".into(), "v".repeat(MAX_LABEL_BYTES));
    assert!(matches!(
        m.apply(Op::Update {
            key: "a".into(),
            labels,
            time_ns: 5
        }),
        Err(StateError::InvalidArgument {
            reason: Invalid::LabelTooLong { .. }
        })
    ));
    let mut labels = Labels::new();
    labels.insert("k".into(), "v".into());
    m.apply(Op::Update {
        key: "a".into(),
        labels: labels.clone(),
        time_ns: 5,
    })
    .expect("update");
    let a = m.state.get("a").expect("a");
    assert_eq!((&a.labels, a.updated_ns, a.created_ns), (&labels, 5, 10));
}

#[test]
fn replay_is_deterministic() {
    let mut m = Machine::new();
    let mut log = Vec::new();
    for i in 0..20u64 {
        let key = format!("s{i}");
        let parent = if i > 0 {
            Some(format!("c{}", i - 1))
        } else {
            None
        };
        m.create(&key, parent.as_deref(), Kind::Active)
            .expect("create");
        m.commit(&format!("c{i}"), &key).expect("commit");
    }
    // Rebuild the same history as records and replay it on a fresh state.
    let mut replay = Machine::new();
    let mut txid = 0;
    for i in 0..20u64 {
        let key = format!("s{i}");
        let parent = if i > 0 {
            Some(format!("c{}", i - 1))
        } else {
            None
        };
        for op in [
            Op::BeginCreate {
                key: key.clone(),
                parent,
                kind: Kind::Active,
                id: SnapshotId(i + 1),
                labels: Labels::new(),
                time_ns: 10,
            },
            Op::Complete {
                of: TxId(txid + 1),
                usage: None,
            },
            Op::BeginCommit {
                key: key.clone(),
                name: format!("c{i}"),
                labels: Labels::new(),
                time_ns: 20,
            },
            Op::Complete {
                of: TxId(txid + 3),
                usage: Some(Usage {
                    size_bytes: 1,
                    inodes: 1,
                }),
            },
        ] {
            txid += 1;
            log.push(Record {
                txid: TxId(txid),
                op,
            });
        }
    }
    for r in &log {
        replay.state.apply(r).expect("replay");
    }
    assert_eq!(replay.state, m.state);
    assert_eq!(m.state.parent_ids("c19").expect("chain").len(), 19);
}
