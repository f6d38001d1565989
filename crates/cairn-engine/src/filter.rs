//! Walk filters, a subset of containerd's filter syntax: each filter is a comma-separated list
//! of conditions that must all hold, and a snapshot matches if any filter matches (no filters:
//! everything). Conditions: `FIELD==VALUE`, `FIELD!=VALUE`, or `FIELD` (present), where FIELD
//! is `name`, `parent`, `kind` (`active`, `view`, `committed`) or `labels.KEY` (KEY may be
//! double-quoted).

use super::api::Info;
use super::error::EngineError;
use cairn_state::{Invalid, StateError};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cond {
    Eq(Field, String),
    Ne(Field, String),
    Present(Field),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter(Vec<Cond>);

fn bad(filter: &str) -> EngineError {
    StateError::InvalidArgument {
        reason: Invalid::BadFilter {
            filter: filter.to_owned(),
        },
    }
    .into()
}

fn field(s: &str, filter: &str) -> Result<Field, EngineError> {
    match s.trim() {
        "name" => Ok(Field::Name),
        "parent" => Ok(Field::Parent),
        "kind" => Ok(Field::Kind),
        other => other
            .strip_prefix("labels.")
            .map(|k| Field::Label(k.trim_matches('"').to_owned()))
            .ok_or_else(|| bad(filter)),
    }
}

pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, EngineError> {
    filters.iter().map(|f| parse(f)).collect()
}

fn parse(filter: &str) -> Result<Filter, EngineError> {
    let mut conds = Vec::new();
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let cond = if let Some((f, v)) = part.split_once("!=") {
            Cond::Ne(field(f, filter)?, v.trim().trim_matches('"').to_owned())
        } else if let Some((f, v)) = part.split_once("==") {
            Cond::Eq(field(f, filter)?, v.trim().trim_matches('"').to_owned())
        } else {
            Cond::Present(field(part, filter)?)
        };
        conds.push(cond);
    }
    Ok(Filter(conds))
}

fn value(info: &Info, field: &Field) -> Option<String> {
    match field {
        Field::Name => Some(info.key.clone()),
        // containerd's snapshot adaptors: the parent is always present, "" when there is none
        // (so `parent==""` selects the snapshots without one, as its remote-snapshot lookup asks).
        Field::Parent => Some(info.parent.clone().unwrap_or_default()),
        Field::Kind => Some(info.kind.to_string().to_lowercase()),
        Field::Label(k) => info.labels.get(k).cloned(),
    }
}

pub fn matches_any(filters: &[Filter], info: &Info) -> bool {
    filters.is_empty()
        || filters.iter().any(|Filter(conds)| {
            conds.iter().all(|c| match c {
                Cond::Eq(f, v) => value(info, f).as_deref() == Some(v.as_str()),
                // containerd's selector: a missing field has the value "" for `!=`.
                Cond::Ne(f, v) => value(info, f).unwrap_or_default() != *v,
                Cond::Present(f) => value(info, f).is_some(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_state::types::Kind;

    fn info(key: &str, kind: Kind, label: Option<(&str, &str)>) -> Info {
        Info {
            key: key.into(),
            parent: None,
            kind,
            labels: label
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            created_ns: 0,
            updated_ns: 0,
        }
    }

    #[test]
    fn conditions_and_alternatives() {
        let f = parse_all(&["kind==committed,labels.\"a\"==1".into(), "name==x".into()])
            .expect("parse");
        assert!(matches_any(
            &f,
            &info("c", Kind::Committed, Some(("a", "1")))
        ));
        assert!(!matches_any(
            &f,
            &info("c", Kind::Committed, Some(("a", "2")))
        ));
        assert!(!matches_any(&f, &info("c", Kind::Active, Some(("a", "1")))));
        assert!(matches_any(&f, &info("x", Kind::Active, None)));
        let f = parse_all(&["labels.a".into(), "parent!=p".into()]).expect("parse");
        assert!(matches_any(&f, &info("y", Kind::View, None)));
        assert!(parse_all(&["bogus==1".into()]).is_err());
        let f = parse_all(&["parent!=\"\"".into()]).expect("parse");
        assert!(
            !matches_any(&f, &info("no-parent", Kind::Active, None)),
            "a missing parent is \"\""
        );
        let f = parse_all(&["parent==\"\"".into()]).expect("parse");
        assert!(matches_any(&f, &info("base", Kind::Committed, None)));
        let f = parse_all(&["labels.a!=1".into()]).expect("parse");
        assert!(matches_any(&f, &info("no-label", Kind::Active, None)));
        assert!(matches_any(&[], &info("z", Kind::View, None)));
    }
}
