//! The engine's replay path on arbitrary journal records: decoding, the sequence checks and the
//! state machine must give a typed error or a state, never panic. A state replay accepts must
//! also survive the rest of recovery's pure steps: the pending transactions are aborted (row
//! "pending" of the decision table), and the result round-trips through a checkpoint.
//!
//! Input layout: a sequence of chunks, each a u16 LE length then that many bytes (the last
//! chunk takes what is left if the length runs past the end). Each chunk is one WAL payload, so
//! a chunk is normally `0x01` (the record version) followed by the postcard of a `Record`.
//! The chunks are appended with `cairn_wal::Wal` on `SimStorage`, read back through `Wal::open`,
//! and replayed onto `State::new()` with `cairn_engine::recovery::replay`, exactly as
//! `Engine::open` does for a root without a checkpoint.
//!
//! Applied record by record, a record the state machine refuses must leave the state
//! byte-identical (its checkpoint encoding), and every accepted one must keep the layers'
//! refcounts exact.
//!
//! Seeds, `fuzz/seeds/journal_replay/`, are real journals in this layout: the payloads the
//! engine wrote (read back from a root's log) for a prepare/commit/view/update/remove session
//! (`session`), a root left with transactions pending (`pending`), and a single prepare
//! (`one-prepare`). They are written by `crates/cairn-engine/tests/engine_format.rs` with `CAIRN_BLESS=1`.

#![no_main]

use cairn_engine::checkpoint::{self, Checkpoint};
use cairn_engine::{journal, recovery, RecoveryReport};
use cairn_state::State;
use cairn_wal::storage::{SimStorage, Storage};
use cairn_wal::{Lsn, StoreId, Wal, WalOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

const STORE: StoreId = StoreId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
const MAX_RECORD: u32 = 16 << 10;

fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        out.push(chunk);
        data = rest;
    }
    out
}

fn encoded(state: &State) -> Vec<u8> {
    let cp = Checkpoint {
        lsn: Lsn(1),
        state: state.clone(),
    };
    checkpoint::encode(STORE, &cp)
}

/// Apply the payloads one by one; `None` if one is refused (after checking the refusal changed
/// nothing) or breaks the sequence rules replay checks before applying.
fn step_through(payloads: &[&[u8]]) -> Option<State> {
    let mut state = State::new();
    for (i, payload) in payloads.iter().enumerate() {
        let record = journal::decode(Lsn(i as u64 + 1), payload).ok()?;
        if record.txid <= state.last_txid {
            return None;
        }
        let id = record.op.takes_id();
        if id.is_some_and(|id| id.0 != state.next_id) {
            return None;
        }
        let before = encoded(&state);
        if state.apply(&record).is_err() {
            assert_eq!(encoded(&state), before, "a refused record changed the state");
            return None;
        }
        state.assert_refcounts();
    }
    Some(state)
}

fuzz_target!(|data: &[u8]| {
    let payloads: Vec<&[u8]> = chunks(data)
        .into_iter()
        .filter(|p| p.len() <= MAX_RECORD as usize)
        .collect();
    let storage = SimStorage::new();
    let dir = Path::new("/root/wal");
    let options = WalOptions {
        segment_size_bytes: 64 << 10,
        max_record_bytes: MAX_RECORD,
        preallocate: false,
        store_id: Some(STORE),
        ..WalOptions::default()
    };
    let shared: Arc<dyn Storage> = Arc::new(storage);
    {
        let (mut wal, _, _) =
            Wal::open(Arc::clone(&shared), dir, options.clone()).expect("create the log");
        if !payloads.is_empty() {
            wal.append_batch(&payloads).expect("append");
        }
        wal.sync().expect("sync");
    }
    let options = WalOptions {
        create_if_missing: false,
        ..options
    };
    let (wal, records, _) = Wal::open(Arc::clone(&shared), dir, options).expect("reopen the log");

    // Record by record, as replay does: a record the state machine refuses must leave the
    // state byte-identical (compared as checkpoint encodings).
    let stepped = step_through(&payloads);

    let mut state = State::new();
    let mut report = RecoveryReport::default();
    match recovery::replay(&mut state, Lsn::NONE, records, &mut report) {
        Ok(()) => {}
        Err(e) => {
            // Messages are built from untrusted fields: formatting them must not panic.
            let _ = e.to_string();
            assert!(stepped.is_none(), "replay refused what applying record by record took");
            return;
        }
    }
    assert_eq!(
        stepped.as_ref(),
        Some(&state),
        "replay and record-by-record application differ"
    );
    assert_eq!(report.replayed_records, payloads.len() as u64);

    // Every accepted record re-encodes to a payload that decodes to the same record.
    for (i, payload) in payloads.iter().enumerate() {
        let lsn = Lsn(i as u64 + 1);
        let record = journal::decode(lsn, payload).expect("replay accepted it");
        let again = journal::decode(lsn, &journal::encode(&record)).expect("re-encoded record");
        assert_eq!(again, record);
    }

    // Recovery's next pure step: drop what is pending.
    match recovery::abort_pending(&mut state, wal.next_lsn()) {
        Ok(_) => assert!(state.pending.is_empty(), "pending left after the aborts"),
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    }
    // Mounts need every snapshot's parent chain: it must resolve for every key.
    for key in state.snapshots.keys() {
        state
            .parent_ids(key)
            .expect("a replayed snapshot's parents exist");
    }
    // And the state checkpoints and reads back.
    let cp = Checkpoint {
        lsn: Lsn(wal.next_lsn().0 - 1),
        state,
    };
    let bytes = checkpoint::encode(STORE, &cp);
    let back = checkpoint::decode(STORE, &bytes).expect("a checkpoint this build wrote");
    assert_eq!(back, cp);
});
