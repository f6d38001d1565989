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
        let before = postcard::to_stdvec(&self.state).expect("encode");
        let record = Record { txid, op };
        assert!(
            limits::encoded_bytes_bound(&record)
                >= postcard::to_stdvec(&record).expect("encode").len()
        );
        let result = self.state.apply(&record);
        match &result {
            Ok(_) => {
                self.txid += 1;
                self.state.assert_refcounts();
            }
            Err(_) => assert_eq!(
                postcard::to_stdvec(&self.state).expect("encode"),
                before,
                "a refused record changed the state"
            ),
        }
        result.map(|a| (txid, a.effects))
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
            digest: None,
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
            digest: None,
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
            stage: Stage::Empty { kind: Kind::Active },
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
            usage: None,
            digest: None,
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
                digest: None,
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
                digest: None,
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

impl Machine {
    fn import(
        &mut self,
        chain: &str,
        parent: Option<&str>,
        pin: bool,
    ) -> Result<Vec<Effect>, StateError> {
        let id = SnapshotId(self.state.next_id);
        let (txid, effects) = self.apply(Op::BeginImport {
            id,
            parent: parent.map(Into::into),
            pin,
            time_ns: 1,
        })?;
        assert!(matches!(effects[..], [Effect::Stage { .. }]));
        let (_, effects) = self.apply(Op::CompleteImport {
            of: txid,
            diff_id: format!("diff-{chain}"),
            chain_id: chain.into(),
            size_bytes: 10,
            usage: Usage {
                size_bytes: 10,
                inodes: 1,
            },
        })?;
        Ok(effects)
    }

    fn refs(&self, chain: &str) -> (bool, u64, u64) {
        let l = self.state.layer(chain).expect("layer");
        (l.pinned, l.children, l.holders)
    }
}

fn deletes(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Delete { .. }))
        .count()
}

#[test]
fn layers_count_references_and_release_in_cascade() {
    let mut m = Machine::new();
    m.import("L0", None, true).expect("base");
    m.import("L1", Some("L0"), false).expect("middle");
    m.import("L2", Some("L1"), false).expect("top");
    assert_eq!(m.refs("L0"), (true, 1, 0));
    assert_eq!(
        m.state.layer_chain("L2").expect("chain"),
        vec!["L2", "L1", "L0"]
    );
    assert_eq!(m.state.get("L2").expect("snapshot").kind, Kind::Committed);
    // The same layer again: discarded, pinned now.
    let effects = m.import("L2", Some("L1"), true).expect("again");
    assert!(matches!(effects[..], [Effect::Discard { .. }]));
    assert_eq!(m.refs("L2"), (true, 0, 0));
    // A layer's snapshot is not removed behind its back.
    assert!(matches!(
        m.apply(Op::Remove { key: "L2".into() }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::OwnedByLayer { .. },
            ..
        })
    ));
    assert!(matches!(
        m.apply(Op::RemoveLayer {
            chain_id: "L1".into()
        }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::Referenced {
                children: 1,
                holders: 0
            },
            ..
        })
    ));
    m.apply(Op::PutImage {
        name: "img".into(),
        top: "L2".into(),
        manifest_digest: "m".into(),
        config_digest: "c".into(),
        time_ns: 2,
    })
    .expect("image");
    assert!(matches!(
        m.apply(Op::RemoveLayer {
            chain_id: "L2".into()
        }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::Referenced { holders: 1, .. },
            ..
        })
    ));
    let (_, effects) = m
        .apply(Op::RemoveImage { name: "img".into() })
        .expect("rm image");
    assert_eq!(deletes(&effects), 0, "L2 is still pinned by the user");
    // Releasing L2 releases L1 (unpinned, now unreferenced) but not L0 (pinned).
    let (_, effects) = m
        .apply(Op::RemoveLayer {
            chain_id: "L2".into(),
        })
        .expect("rm L2");
    assert_eq!(deletes(&effects), 2);
    assert!(m.state.layer("L1").is_err() && m.state.get("L1").is_err());
    assert_eq!(m.refs("L0"), (true, 0, 0));
    let (_, effects) = m
        .apply(Op::RemoveLayer {
            chain_id: "L0".into(),
        })
        .expect("rm L0");
    assert_eq!(deletes(&effects), 1);
    assert!(m.state.layers.is_empty() && m.state.snapshots.is_empty());
}

#[test]
fn unheld_layers_are_collected_and_images_replace() {
    let mut m = Machine::new();
    m.import("A", None, false).expect("a");
    m.import("B", Some("A"), false).expect("b");
    m.import("P", None, true).expect("pinned");
    m.apply(Op::PutImage {
        name: "x".into(),
        top: "B".into(),
        manifest_digest: "m".into(),
        config_digest: "c".into(),
        time_ns: 1,
    })
    .expect("image");
    let (_, effects) = m.apply(Op::CollectLayers).expect("collect");
    assert_eq!(deletes(&effects), 0, "everything is held");
    // Re-pointing the image at another top releases the old chain.
    m.import("C", None, false).expect("c");
    let (_, effects) = m
        .apply(Op::PutImage {
            name: "x".into(),
            top: "C".into(),
            manifest_digest: "m2".into(),
            config_digest: "c2".into(),
            time_ns: 2,
        })
        .expect("replace");
    assert_eq!(deletes(&effects), 2);
    m.import("D", None, false)
        .expect("an interrupted load's layer");
    let (_, effects) = m.apply(Op::CollectLayers).expect("collect");
    assert_eq!(deletes(&effects), 1);
    assert_eq!(
        m.state.layers.keys().cloned().collect::<Vec<_>>(),
        vec!["C", "P"]
    );
}

#[test]
fn imports_block_their_parent_and_pending_imports_abort_cleanly() {
    let mut m = Machine::new();
    m.import("A", None, true).expect("a");
    let (txid, _) = m
        .apply(Op::BeginImport {
            id: SnapshotId(m.state.next_id),
            parent: Some("A".into()),
            pin: true,
            time_ns: 1,
        })
        .expect("begin");
    assert!(matches!(
        m.apply(Op::RemoveLayer {
            chain_id: "A".into()
        }),
        Err(StateError::FailedPrecondition { .. })
    ));
    assert!(matches!(
        m.apply(Op::Complete {
            of: txid,
            usage: None,
            digest: None,
        }),
        Err(StateError::NotPending { .. })
    ));
    let (_, effects) = m.apply(Op::Abort { of: txid }).expect("abort");
    assert_eq!(effects, vec![Effect::Discard { txid }]);
    m.apply(Op::RemoveLayer {
        chain_id: "A".into(),
    })
    .expect("now removable");
    assert!(matches!(
        m.apply(Op::BeginImport {
            id: SnapshotId(m.state.next_id),
            parent: Some("gone".into()),
            pin: true,
            time_ns: 1
        }),
        Err(StateError::NotFound { .. })
    ));
}

#[test]
fn containers_are_created_in_two_steps_and_removed_whole() {
    let mut m = Machine::new();
    m.import("L", None, false).expect("layer");
    let init_id = SnapshotId(m.state.next_id);
    let (t1, effects) = m
        .apply(Op::BeginContainer {
            name: "web".into(),
            layer: "L".into(),
            init_id,
            time_ns: 5,
        })
        .expect("begin");
    assert!(matches!(effects[..], [Effect::Stage { .. }]));
    assert_eq!(m.refs("L"), (false, 0, 1), "the container holds its layer");
    // Its keys are reserved at once.
    assert!(matches!(
        m.create("web", None, Kind::Active),
        Err(StateError::AlreadyExists { .. })
    ));
    assert!(matches!(
        m.create("web-init", None, Kind::Active),
        Err(StateError::AlreadyExists { .. })
    ));
    assert!(matches!(
        m.apply(Op::BeginContainer {
            name: "web".into(),
            layer: "L".into(),
            init_id: SnapshotId(m.state.next_id),
            time_ns: 5
        }),
        Err(StateError::AlreadyExists { .. })
    ));
    // Completing the init begins the read-write snapshot under the completing record's txid.
    let (t2, effects) = m
        .apply(Op::Complete {
            of: t1,
            usage: None,
            digest: None,
        })
        .expect("init done");
    assert!(
        matches!(effects[..], [Effect::Install { .. }, Effect::Stage { txid, .. }] if txid == t2)
    );
    assert_eq!(m.state.get("web-init").expect("init").kind, Kind::Committed);
    assert!(!m.state.containers["web"].ready);
    assert_eq!(
        m.state.stranded_containers(),
        Vec::<String>::new(),
        "its rw snapshot is pending"
    );
    m.apply(Op::Complete {
        of: t2,
        usage: None,
        digest: None,
    })
    .expect("rw done");
    assert!(m.state.containers["web"].ready);
    assert_eq!(
        m.state.get("web").expect("rw").parent.as_deref(),
        Some("web-init")
    );
    // Its snapshots are not removed or committed behind its back.
    assert!(matches!(
        m.apply(Op::Remove { key: "web".into() }),
        Err(StateError::FailedPrecondition {
            reason: Precondition::OwnedByContainer { .. },
            ..
        })
    ));
    assert!(matches!(
        m.commit("img", "web"),
        Err(StateError::FailedPrecondition { .. })
    ));
    let (_, effects) = m
        .apply(Op::RemoveContainer { name: "web".into() })
        .expect("rm");
    // rw, init, and the layer nothing else held.
    assert_eq!(deletes(&effects), 3);
    assert!(
        m.state.snapshots.is_empty() && m.state.layers.is_empty() && m.state.containers.is_empty()
    );
}

#[test]
fn an_aborted_container_step_leaves_nothing() {
    for abort_rw in [false, true] {
        let mut m = Machine::new();
        m.import("L", None, true).expect("layer");
        let (t1, _) = m
            .apply(Op::BeginContainer {
                name: "c".into(),
                layer: "L".into(),
                init_id: SnapshotId(m.state.next_id),
                time_ns: 1,
            })
            .expect("begin");
        let (_, effects) = if abort_rw {
            let (t2, _) = m
                .apply(Op::Complete {
                    of: t1,
                    usage: None,
                    digest: None,
                })
                .expect("init");
            m.apply(Op::Abort { of: t2 }).expect("abort rw")
        } else {
            m.apply(Op::Abort { of: t1 }).expect("abort init")
        };
        assert!(effects.contains(&Effect::Discard {
            txid: effects
                .iter()
                .find_map(|e| match e {
                    Effect::Discard { txid } => Some(*txid),
                    _ => None,
                })
                .expect("discard")
        }));
        assert_eq!(
            deletes(&effects),
            usize::from(abort_rw),
            "the init snapshot goes too"
        );
        assert!(m.state.containers.is_empty(), "abort_rw={abort_rw}");
        assert_eq!(m.refs("L"), (true, 0, 0), "the hold is released");
        assert_eq!(
            m.state.snapshots.keys().cloned().collect::<Vec<_>>(),
            vec!["L"]
        );
    }
}

const CHAIN: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn reserved(r: Result<(TxId, Vec<Effect>), StateError>) -> bool {
    matches!(
        r,
        Err(StateError::InvalidArgument {
            reason: Invalid::ReservedKey { .. }
        })
    )
}

#[test]
fn chain_id_keys_belong_to_the_layer_store() {
    assert!(limits::is_layer_key(CHAIN));
    assert!(!limits::is_layer_key("sha256:0123"));
    assert!(!limits::is_layer_key(&CHAIN.to_uppercase()));
    let mut m = Machine::new();
    let begin = |key: &str, id| Op::BeginCreate {
        key: key.into(),
        parent: None,
        kind: Kind::Active,
        id: SnapshotId(id),
        labels: Labels::new(),
        time_ns: 1,
    };
    assert!(reserved(m.apply(begin(CHAIN, 1))));
    m.create("a", None, Kind::Active).expect("a");
    assert!(reserved(m.apply(Op::BeginCommit {
        key: "a".into(),
        name: CHAIN.into(),
        labels: Labels::new(),
        time_ns: 2,
    })));
    m.import(CHAIN, None, true)
        .expect("the layer store may use it");
    assert!(reserved(m.apply(Op::BeginContainer {
        name: CHAIN.into(),
        layer: CHAIN.into(),
        init_id: SnapshotId(m.state.next_id),
        time_ns: 3,
    })));
    // A user snapshot may sit on a layer.
    m.create("on-layer", Some(CHAIN), Kind::Active)
        .expect("a layer is a parent");
}

#[test]
fn a_refused_import_completion_leaves_the_import_pending() {
    // A root made before ChainID keys were reserved can have a user snapshot under a layer's
    // key. The completion is refused and changes nothing (Machine::apply compares the bytes);
    // the import can still be aborted.
    let mut m = Machine::new();
    let (txid, _) = m
        .apply(Op::BeginImport {
            id: SnapshotId(1),
            parent: None,
            pin: true,
            time_ns: 1,
        })
        .expect("begin");
    let squatter = Snapshot::created(SnapshotId(2), Kind::Active, None, Labels::new(), 1, TxId(1));
    m.state.snapshots.insert(CHAIN.into(), squatter);
    m.state.next_id = 3;
    let complete = Op::CompleteImport {
        of: txid,
        diff_id: CHAIN.into(),
        chain_id: CHAIN.into(),
        size_bytes: 1,
        usage: Usage {
            size_bytes: 1,
            inodes: 1,
        },
    };
    assert!(matches!(
        m.apply(complete),
        Err(StateError::AlreadyExists { .. })
    ));
    assert!(m.state.pending.contains_key(&txid), "still pending");
    let (_, effects) = m.apply(Op::Abort { of: txid }).expect("abort applies");
    assert_eq!(effects, vec![Effect::Discard { txid }]);
}

#[test]
fn a_held_import_completion_is_both_steps_or_neither() {
    let mut m = Machine::new();
    let begin = |m: &mut Machine| {
        let id = SnapshotId(m.state.next_id);
        m.apply(Op::BeginImport {
            id,
            parent: None,
            pin: false,
            time_ns: 1,
        })
        .expect("begin")
        .0
    };
    let held = |of, hold: &str| Op::CompleteImportHeld {
        of,
        diff_id: CHAIN.into(),
        chain_id: CHAIN.into(),
        size_bytes: 1,
        usage: Usage {
            size_bytes: 1,
            inodes: 1,
        },
        hold: hold.into(),
        time_ns: 2,
    };
    // A hold that is not a valid image name refuses the whole record: no layer, still pending.
    let txid = begin(&mut m);
    assert!(m.apply(held(txid, "")).is_err());
    assert!(m.state.pending.contains_key(&txid), "still pending");
    assert!(m.state.layers.is_empty());
    m.apply(Op::Abort { of: txid }).expect("abort");
    // Accepted: the layer exists and the hold image holds it, in one step.
    let txid = begin(&mut m);
    m.apply(held(txid, "img#partial")).expect("held completion");
    assert_eq!(m.state.images["img#partial"].top, CHAIN);
    assert_eq!(m.state.layers[CHAIN].holders, 1);
    // Nothing to collect: the layer is held.
    let (_, effects) = m.apply(Op::CollectLayers).expect("collect");
    assert!(effects.is_empty(), "{effects:?}");
}

fn invalid_reason(r: Result<(TxId, Vec<Effect>), StateError>) -> Invalid {
    match r {
        Err(StateError::InvalidArgument { reason }) => reason,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn labels_keys_and_records_are_bounded() {
    let mut m = Machine::new();
    let many: Labels = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    let big: Labels = (0..32)
        .map(|i| (format!("k{i}"), "v".repeat(4000)))
        .collect();
    let prepare = |labels: &Labels| Op::BeginCreate {
        key: "k".into(),
        parent: None,
        kind: Kind::Active,
        id: SnapshotId(1),
        labels: labels.clone(),
        time_ns: 1,
    };
    assert!(matches!(
        invalid_reason(m.apply(prepare(&many))),
        Invalid::TooManyLabels { count, max: MAX_LABELS } if count == MAX_LABELS + 1
    ));
    assert!(matches!(
        invalid_reason(m.apply(prepare(&big))),
        Invalid::LabelsTooLarge { .. }
    ));
    m.create("k", None, Kind::Active).expect("k");
    assert!(matches!(
        invalid_reason(m.apply(Op::Update {
            key: "k".into(),
            labels: many.clone(),
            time_ns: 2
        })),
        Invalid::TooManyLabels { .. }
    ));
    let long = "x".repeat(MAX_KEY_BYTES + 1);
    for op in [
        Op::Remove { key: long.clone() },
        Op::RemoveImage { name: long.clone() },
        Op::RemoveContainer { name: long.clone() },
        Op::RemoveLayer {
            chain_id: long.clone(),
        },
        Op::PutImage {
            name: "i".into(),
            top: "t".into(),
            manifest_digest: long.clone(),
            config_digest: "c".into(),
            time_ns: 1,
        },
        Op::BeginContainer {
            name: "n".repeat(MAX_KEY_BYTES - 4),
            layer: "l".into(),
            init_id: SnapshotId(m.state.next_id),
            time_ns: 1,
        },
    ] {
        assert!(matches!(
            invalid_reason(m.apply(op)),
            Invalid::TooLong { .. } | Invalid::KeyTooLong { .. }
        ));
    }
    // The largest record the bounds allow stays inside the record limit, and the bound used
    // for it is an upper bound of postcard's encoding.
    let fullest: Labels = (0..MAX_LABELS)
        .map(|i| {
            (
                format!("{i:04}"),
                "v".repeat(MAX_LABELS_TOTAL_BYTES / MAX_LABELS - 4),
            )
        })
        .collect();
    let record = Record {
        txid: TxId(u64::MAX),
        op: Op::BeginCreate {
            key: "k".repeat(MAX_KEY_BYTES),
            parent: Some("p".repeat(MAX_KEY_BYTES)),
            kind: Kind::Active,
            id: SnapshotId(u64::MAX),
            labels: fullest,
            time_ns: i64::MIN,
        },
    };
    let encoded = postcard::to_stdvec(&record).expect("encode").len();
    let bound = limits::encoded_bytes_bound(&record);
    assert!(encoded <= bound, "{encoded} > {bound}");
    assert!(bound <= MAX_RECORD_BYTES);
    limits::check_record(&record).expect("within every bound");
}

#[test]
fn apply_reports_the_snapshots_it_changed() {
    let mut m = Machine::new();
    m.create("a", None, Kind::Active).expect("a");
    let txid = TxId(m.txid + 1);
    let applied = m
        .state
        .apply(&Record {
            txid,
            op: Op::BeginCommit {
                key: "a".into(),
                name: "c".into(),
                labels: Labels::new(),
                time_ns: 1,
            },
        })
        .expect("begin commit");
    m.txid += 1;
    assert!(
        applied.snapshots.is_empty(),
        "a begun commit changes no snapshot"
    );
    let applied = m
        .state
        .apply(&Record {
            txid: TxId(m.txid + 1),
            op: Op::Complete {
                of: txid,
                usage: None,
                digest: None,
            },
        })
        .expect("complete");
    m.txid += 1;
    assert_eq!(applied.snapshots, vec!["a".to_owned(), "c".to_owned()]);
    // A cascade reports every layer snapshot it removed.
    m.import("L0", None, false).expect("L0");
    m.import("L1", Some("L0"), true).expect("L1");
    let applied = m
        .state
        .apply(&Record {
            txid: TxId(m.txid + 1),
            op: Op::RemoveLayer {
                chain_id: "L1".into(),
            },
        })
        .expect("rm L1");
    assert_eq!(applied.snapshots, vec!["L0".to_owned(), "L1".to_owned()]);
    assert_eq!(deletes(&applied.effects), 2);
}

#[test]
fn a_plan_changes_nothing_until_committed() {
    let mut m = Machine::new();
    m.create("a", None, Kind::Active).expect("a");
    let before = m.state.clone();
    let plan = m
        .state
        .check(&Record {
            txid: TxId(m.txid + 1),
            op: Op::Remove { key: "a".into() },
        })
        .expect("removable");
    assert_eq!(m.state, before);
    assert!(matches!(plan.effects(), [Effect::Delete { .. }]));
    let applied = m.state.commit(plan);
    assert_eq!(applied.snapshots, vec!["a".to_owned()]);
    assert!(m.state.snapshots.is_empty());
}

fn usage10() -> Usage {
    Usage {
        size_bytes: 10,
        inodes: 1,
    }
}

fn complete_detached(of: TxId, parent: Option<&str>, chain: &str) -> Op {
    Op::CompleteDetachedImport {
        of,
        parent: parent.map(Into::into),
        diff_id: format!("diff-{chain}"),
        chain_id: chain.into(),
        size_bytes: 10,
        usage: usage10(),
    }
}

#[test]
fn detached_imports_complete_in_chain_order_only() {
    let mut m = Machine::new();
    let mut begun = Vec::new();
    for _ in 0..3 {
        let (txid, effects) = m
            .apply(Op::BeginDetachedImport {
                id: SnapshotId(m.state.next_id),
                pin: false,
                time_ns: 1,
            })
            .expect("begin");
        assert_eq!(
            effects,
            vec![Effect::Stage {
                txid,
                stage: Stage::Import { parent: None }
            }]
        );
        begun.push(txid);
    }
    // The child cannot be recorded before its parent is a layer.
    assert!(matches!(
        m.apply(complete_detached(begun[1], Some("A"), "AB")),
        Err(StateError::NotFound { .. })
    ));
    // Nor completed as a plain import or snapshot.
    assert!(matches!(
        m.apply(Op::Complete {
            of: begun[0],
            usage: None,
            digest: None
        }),
        Err(StateError::NotPending { .. })
    ));
    assert!(matches!(
        m.apply(Op::CompleteImport {
            of: begun[0],
            diff_id: "diff-A".into(),
            chain_id: "A".into(),
            size_bytes: 10,
            usage: usage10(),
        }),
        Err(StateError::NotPending { .. })
    ));
    let (_, effects) = m.apply(complete_detached(begun[0], None, "A")).expect("A");
    assert!(matches!(effects[..], [Effect::Install { .. }]));
    m.apply(complete_detached(begun[1], Some("A"), "AB"))
        .expect("AB");
    m.apply(complete_detached(begun[2], Some("AB"), "ABC"))
        .expect("ABC");
    assert_eq!(m.refs("A"), (false, 1, 0));
    assert_eq!(m.refs("AB"), (false, 1, 0));
    assert_eq!(
        m.state.get("ABC").expect("snap").parent.as_deref(),
        Some("AB")
    );
    assert_eq!(m.state.layer_chain("ABC").expect("chain").len(), 3);
    assert!(m.state.pending.is_empty());
}

#[test]
fn a_detached_child_of_a_failed_parent_is_refused_then_aborted_whole() {
    let mut m = Machine::new();
    let (parent, _) = m
        .apply(Op::BeginDetachedImport {
            id: SnapshotId(m.state.next_id),
            pin: false,
            time_ns: 1,
        })
        .expect("parent");
    let (child, _) = m
        .apply(Op::BeginDetachedImport {
            id: SnapshotId(m.state.next_id),
            pin: false,
            time_ns: 1,
        })
        .expect("child");
    let (_, effects) = m.apply(Op::Abort { of: parent }).expect("abort parent");
    assert_eq!(effects, vec![Effect::Discard { txid: parent }]);
    // The parent never became a layer: the child's completion is refused, changing nothing.
    assert!(matches!(
        m.apply(complete_detached(child, Some("P"), "PC")),
        Err(StateError::NotFound { .. })
    ));
    assert!(m.state.pending.contains_key(&child));
    let (_, effects) = m.apply(Op::Abort { of: child }).expect("abort child");
    assert_eq!(effects, vec![Effect::Discard { txid: child }]);
    assert!(m.state.pending.is_empty() && m.state.layers.is_empty());
}

#[test]
fn a_detached_import_of_a_layer_present_discards_its_copy() {
    let mut m = Machine::new();
    m.import("A", None, false).expect("a");
    let (txid, _) = m
        .apply(Op::BeginDetachedImport {
            id: SnapshotId(m.state.next_id),
            pin: true,
            time_ns: 1,
        })
        .expect("begin");
    let (_, effects) = m.apply(complete_detached(txid, None, "A")).expect("again");
    assert_eq!(effects, vec![Effect::Discard { txid }]);
    assert_eq!(m.refs("A"), (true, 0, 0));
}
