//! Between containerd's protobuf messages and the engine's types.

use cairn_engine::Info;
use cairn_state::types::{Kind, Mount};
use cairn_state::Labels;
use containerd_snapshots::api::snapshots::v1 as pb;
use containerd_snapshots::api::types as pbt;
use std::collections::HashMap;

/// containerd says "no parent" with an empty string.
pub fn parent(p: &str) -> Option<&str> {
    (!p.is_empty()).then_some(p)
}

pub fn labels(l: HashMap<String, String>) -> Labels {
    l.into_iter().collect()
}

fn kind(k: Kind) -> pb::Kind {
    match k {
        Kind::Active => pb::Kind::Active,
        Kind::View => pb::Kind::View,
        Kind::Committed => pb::Kind::Committed,
    }
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

pub fn info(i: Info) -> pb::Info {
    pb::Info {
        name: i.key,
        parent: i.parent.unwrap_or_default(),
        kind: kind(i.kind) as i32,
        created_at: Some(timestamp(i.created_ns)),
        updated_at: Some(timestamp(i.updated_ns)),
        labels: i.labels.into_iter().collect(),
    }
}

pub fn mounts(m: Vec<Mount>) -> Vec<pbt::Mount> {
    m.into_iter()
        .map(|m| pbt::Mount {
            r#type: m.kind,
            source: m.source.to_string_lossy().into_owned(),
            target: String::new(),
            options: m.options,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_into_seconds_and_nanos() {
        let t = timestamp(1_700_000_000_123_456_789);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_999));
    }

    #[test]
    fn an_empty_parent_is_none() {
        assert_eq!(parent(""), None);
        assert_eq!(parent("a b/c"), Some("a b/c"));
    }
}
