//! `cairn snapshot …`: containerd's snapshot calls, as `ctr snapshots` offers them.

use super::error::CliError;
use super::output::{mount_command, mount_text, mounts_json, time_text};
use super::Ctx;
use cairn_engine::Info;
use cairn_state::types::{Kind, Mount};
use cairn_state::Labels;
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Write the changes of an Active snapshot against its parent as an OCI layer tar (whiteouts
    /// for deletions), to standard output or FILE; `layer import --parent` takes it back.
    Diff {
        key: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Create an active (writable) snapshot on PARENT, a committed snapshot, and print its mounts.
    Prepare {
        /// The new snapshot's key.
        key: String,
        /// A committed snapshot to build on; none for an empty snapshot.
        parent: Option<String>,
        /// A label to set, `key=value`; repeatable.
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Create a read-only view of PARENT and print its mounts.
    View {
        /// The new view's key.
        key: String,
        /// The committed snapshot to view; none for an empty view.
        parent: Option<String>,
        /// A label to set, `key=value`; repeatable.
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Commit the active snapshot KEY as NAME; KEY is gone afterwards.
    Commit {
        /// The committed snapshot's name (a key like any other).
        name: String,
        /// The active snapshot to commit.
        key: String,
        /// A label to set, `key=value`; repeatable.
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Remove snapshots, in the order given; stops at the first that cannot be removed.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show a snapshot: parent, kind, labels, times.
    Info { key: String },
    /// List every snapshot: KEY PARENT KIND.
    #[command(alias = "list")]
    Ls,
    /// Print the mount(8) commands that mount KEY on TARGET.
    Mounts { target: String, key: String },
    /// Disk usage of a snapshot's own tree (SIZE, INODES), the bytes of its changes against its
    /// parent (DIFF, aufs' DiffSize) and the size of the whole tree a mount shows (TREE); of
    /// one snapshot or every one.
    Usage { key: Option<String> },
    /// The changes of KEY against its parent, as `docker diff` prints them: `A path` added,
    /// `C path` changed, `D path` deleted, sorted by path.
    Changes { key: String },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Set labels (`k=v`) or remove them (`k=`).
    Label {
        key: String,
        #[arg(required = true, value_name = "K=V")]
        labels: Vec<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("a label needs a key: key=value".into()),
        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
        None => Err(format!("{s:?} is not key=value")),
    }
}

fn labels(pairs: Vec<(String, String)>) -> Labels {
    pairs.into_iter().collect()
}

/// A snapshot as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct InfoJson<'a> {
    pub key: &'a str,
    pub parent: Option<&'a str>,
    pub kind: Kind,
    pub labels: &'a Labels,
    pub created: String,
    pub updated: String,
}

impl<'a> From<&'a Info> for InfoJson<'a> {
    fn from(i: &'a Info) -> InfoJson<'a> {
        InfoJson {
            key: &i.key,
            parent: i.parent.as_deref(),
            kind: i.kind,
            labels: &i.labels,
            created: time_text(i.created_ns),
            updated: time_text(i.updated_ns),
        }
    }
}

pub fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<(), CliError> {
    let out = &ctx.out;
    match cmd {
        SnapshotCmd::Prepare {
            key,
            parent,
            labels: l,
        } => {
            let mounts =
                ctx.with_engine(|e| Ok(e.prepare(&key, parent.as_deref(), labels(l))?))?;
            print_mounts(ctx, &key, &mounts)
        }
        SnapshotCmd::View {
            key,
            parent,
            labels: l,
        } => {
            let mounts = ctx.with_engine(|e| Ok(e.view(&key, parent.as_deref(), labels(l))?))?;
            print_mounts(ctx, &key, &mounts)
        }
        SnapshotCmd::Commit {
            name,
            key,
            labels: l,
        } => {
            ctx.with_engine(|e| Ok(e.commit(&name, &key, labels(l))?))?;
            out.result(&json!({"name": name, "key": key}), || Ok(()))
        }
        SnapshotCmd::Rm { keys } => {
            let mut removed = Vec::new();
            let result = ctx.with_engine(|e| {
                for key in &keys {
                    e.remove(key)?;
                    removed.push(key.clone());
                }
                Ok(())
            });
            if out.json && result.is_ok() {
                out.json_line(&json!({"removed": removed}))?;
            }
            result
        }
        SnapshotCmd::Info { key } => {
            let info = ctx.with_engine(|e| Ok(e.stat(&key)?))?;
            out.result(&InfoJson::from(&info), || print_info(ctx, &info))
        }
        SnapshotCmd::Ls => {
            let infos = ctx.with_engine(|e| Ok(e.walk(&[])?))?;
            let json: Vec<InfoJson> = infos.iter().map(InfoJson::from).collect();
            out.result(&json, || {
                let rows: Vec<Vec<String>> = infos
                    .iter()
                    .map(|i| {
                        vec![
                            i.key.clone(),
                            i.parent.clone().unwrap_or_default(),
                            i.kind.to_string(),
                        ]
                    })
                    .collect();
                out.table(&["KEY", "PARENT", "KIND"], &rows)
            })
        }
        SnapshotCmd::Mounts { target, key } => {
            let mounts = ctx.with_engine(|e| Ok(e.mounts(&key)?))?;
            let commands: Vec<String> = mounts.iter().map(|m| mount_command(m, &target)).collect();
            let value = json!({"key": key, "target": target, "mounts": mounts_json(&mounts), "commands": commands});
            out.result(&value, || commands.iter().try_for_each(|c| out.line(c)))
        }
        SnapshotCmd::Usage { key } => super::aufs::usage(ctx, key.as_deref()),
        SnapshotCmd::Changes { key } => super::aufs::changes(ctx, &key),
        SnapshotCmd::Diff { key, output } => {
            let out: Box<dyn std::io::Write + Send> = match &output {
                Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
                    CliError::new(
                        super::error::ErrorKind::Other,
                        format!("{}: {e}", path.display()),
                    )
                })?),
                None => Box::new(std::io::stdout()),
            };
            let diff_id = ctx.with_engine(|e| Ok(e.diff(&key, out)?))?;
            if let Some(path) = output {
                let value = serde_json::json!({ "key": key, "diff_id": diff_id, "file": path });
                ctx.out.result(&value, || ctx.out.line(&diff_id))?;
            }
            Ok(())
        }
        SnapshotCmd::Tree => {
            let infos = ctx.with_engine(|e| Ok(e.walk(&[])?))?;
            let tree = Tree::new(&infos);
            out.result(&tree.json(), || {
                tree.lines().iter().try_for_each(|l| out.line(l))
            })
        }
        SnapshotCmd::Label { key, labels: args } => {
            let mut set = Labels::new();
            let mut paths = Vec::new();
            for arg in &args {
                let (k, v) =
                    parse_label(arg).map_err(|m| CliError::invalid(format!("label {m}")))?;
                if !v.is_empty() {
                    set.insert(k.clone(), v);
                }
                paths.push(format!("labels.{k}"));
            }
            let info = ctx.with_engine(|e| {
                let mut info = e.stat(&key)?;
                info.labels = set;
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                Ok(e.update(info, &paths)?)
            })?;
            out.result(&InfoJson::from(&info), || {
                info.labels
                    .iter()
                    .try_for_each(|(k, v)| out.line(&format!("{k}={v}")))
            })
        }
    }
}

fn print_mounts(ctx: &Ctx, key: &str, mounts: &[Mount]) -> Result<(), CliError> {
    let value = json!({"key": key, "mounts": mounts_json(mounts)});
    ctx.out.result(&value, || {
        mounts.iter().try_for_each(|m| ctx.out.line(&mount_text(m)))
    })
}

fn print_info(ctx: &Ctx, info: &Info) -> Result<(), CliError> {
    let out = &ctx.out;
    out.line(&format!("key:     {}", info.key))?;
    out.line(&format!(
        "parent:  {}",
        info.parent.as_deref().unwrap_or("-")
    ))?;
    out.line(&format!("kind:    {}", info.kind))?;
    out.line(&format!("created: {}", time_text(info.created_ns)))?;
    out.line(&format!("updated: {}", time_text(info.updated_ns)))?;
    if info.labels.is_empty() {
        out.line("labels:  -")?;
    } else {
        out.line("labels:")?;
        for (k, v) in &info.labels {
            out.line(&format!("  {k}={v}"))?;
        }
    }
    Ok(())
}

/// Parents and children, as `ctr snapshots tree` shows them.
struct Tree<'a> {
    infos: BTreeMap<&'a str, &'a Info>,
    children: BTreeMap<&'a str, Vec<&'a str>>,
    roots: Vec<&'a str>,
}

impl<'a> Tree<'a> {
    fn new(infos: &'a [Info]) -> Tree<'a> {
        let by_key: BTreeMap<&str, &Info> = infos.iter().map(|i| (i.key.as_str(), i)).collect();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut roots = Vec::new();
        for info in infos {
            match info.parent.as_deref() {
                Some(p) if by_key.contains_key(p) => children.entry(p).or_default().push(&info.key),
                _ => roots.push(info.key.as_str()),
            }
        }
        Tree {
            infos: by_key,
            children,
            roots,
        }
    }

    fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for root in &self.roots {
            self.walk(root, 0, &mut lines);
        }
        lines
    }

    fn walk(&self, key: &str, level: usize, lines: &mut Vec<String>) {
        let prefix = if level == 0 {
            String::new()
        } else {
            format!("{}\\_ ", "  ".repeat(level))
        };
        lines.push(format!("{prefix}{key}"));
        for child in self.children.get(key).into_iter().flatten() {
            self.walk(child, level + 1, lines);
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::Value::from(self.roots.iter().map(|r| self.node(r)).collect::<Vec<_>>())
    }

    fn node(&self, key: &str) -> serde_json::Value {
        let kind = self.infos.get(key).map(|i| i.kind.to_string());
        let children: Vec<serde_json::Value> = self
            .children
            .get(key)
            .into_iter()
            .flatten()
            .map(|c| self.node(c))
            .collect();
        json!({"key": key, "kind": kind, "children": children})
    }
}
