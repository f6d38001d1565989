//! Requests that only read. Answers from the state are exact as of the batch (and sent once
//! the batch is durable, so no reply shows a state a crash could take back); walks of trees
//! (usage of an Active snapshot, export, diff, verify) run on a worker.

use super::batch::Batch;
use super::Core;
use crate::api::{ContainerInfo, Info, LayerInfo, Output, Reply, Verified};
use crate::error::EngineError;
use crate::workers::Panicked;
use cairn_state::types::{Kind, Mount, SnapshotId, Usage};
use cairn_state::StateError;
use std::sync::Arc;

impl Core {
    pub(super) fn stat(&self, key: &str) -> Result<Info, EngineError> {
        Ok(Info::of(key, self.state.get(key)?))
    }

    /// containerd's Mounts (storage.GetSnapshot) answers for Active and View only.
    pub(super) fn active_mounts(&self, key: &str) -> Result<Vec<Mount>, EngineError> {
        match self.state.get(key) {
            Ok(s) if s.kind == Kind::Committed => {
                Err(EngineError::from(StateError::FailedPrecondition {
                    key: key.to_owned(),
                    reason: cairn_state::Precondition::NoMounts,
                }))
            }
            _ => self.mounts(key),
        }
    }

    pub(crate) fn mounts(&self, key: &str) -> Result<Vec<Mount>, EngineError> {
        let snap = self.state.get(key)?;
        let parents = self.state.parent_ids(key)?;
        Ok(self.driver.mounts(snap.id, snap.kind, &parents)?)
    }

    pub(super) fn walk(&self, filters: &[String]) -> Result<Vec<Info>, EngineError> {
        let filters = crate::filter::parse_all(filters)?;
        Ok(self
            .state
            .snapshots
            .iter()
            .map(|(k, s)| Info::of(k, s))
            .filter(|info| crate::filter::matches_any(&filters, info))
            .collect())
    }

    pub(super) fn layer_infos(&self) -> Result<Vec<LayerInfo>, EngineError> {
        self.state
            .layers
            .keys()
            .map(|c| crate::layers::layer_info(&self.state, c))
            .collect()
    }

    pub(super) fn container_infos(&self) -> Vec<ContainerInfo> {
        self.state
            .containers
            .iter()
            .map(|(name, c)| ContainerInfo {
                name: name.clone(),
                layer: c.layer.clone(),
                init_key: c.init_key.clone(),
                key: c.key.clone(),
                ready: c.ready,
                created_ns: c.created_ns,
            })
            .collect()
    }

    pub(super) fn usage(&mut self, key: String, reply: Reply<Usage>, batch: &mut Batch) {
        let snap = match self.state.get(&key) {
            Ok(snap) => snap,
            Err(e) => return batch.reply(reply, Err(e.into())),
        };
        if let (Kind::Committed, Some(usage)) = (snap.kind, snap.usage) {
            return batch.reply(reply, Ok(usage));
        }
        // Active trees change under the caller: measure now, off this thread.
        let (driver, id) = (Arc::clone(&self.driver), snap.id);
        let work = move || {
            let measured = driver.usage(id);
            // A remove may have been applied meanwhile. It renames the tree away before
            // deleting anything, so if the tree is still in place the walk saw all of it; if
            // not, the remove came first: NotFound, not an I/O error or a count of a
            // half-deleted tree.
            if std::fs::symlink_metadata(driver.tree(id)).is_err() {
                Err(StateError::NotFound { key }.into())
            } else {
                measured.map_err(EngineError::from)
            }
        };
        self.workers.run("usage", work, answer(reply));
    }

    pub(super) fn export(
        &mut self,
        chain_id: &str,
        mut out: Output,
        reply: Reply<String>,
        batch: &mut Batch,
    ) {
        match self.layer_target(chain_id) {
            Ok((id, diff)) => {
                let driver = Arc::clone(&self.driver);
                let work = move || {
                    crate::layers::export(driver.as_ref(), id, &diff, &mut out.0)
                        .map(|d| d.to_string())
                };
                self.workers.run("export", work, answer(reply));
            }
            Err(e) => batch.reply(reply, Err(e)),
        }
    }

    /// `snapshot diff`: the trees are resolved here, the walk runs on a worker.
    pub(super) fn diff(&mut self, key: &str, out: Output, reply: Reply<String>, batch: &mut Batch) {
        let target = self
            .state
            .get(key)
            .map_err(EngineError::from)
            .and_then(|snap| {
                if snap.kind == Kind::View {
                    return Err(StateError::FailedPrecondition {
                        key: key.to_owned(),
                        reason: cairn_state::Precondition::NotActive,
                    }
                    .into());
                }
                let parents = self.state.parent_ids(key)?;
                Ok((snap.id, parents.first().copied()))
            });
        match target {
            Ok((id, parent)) => {
                let driver = Arc::clone(&self.driver);
                let work = move || {
                    crate::layers::diff(driver.as_ref(), id, parent, out.0).map(|d| d.to_string())
                };
                self.workers.run("diff", work, answer(reply));
            }
            Err(e) => batch.reply(reply, Err(e)),
        }
    }

    pub(super) fn verify(
        &mut self,
        chain_id: Option<String>,
        reply: Reply<Vec<Verified>>,
        batch: &mut Batch,
    ) {
        let chains: Vec<String> = match chain_id {
            Some(c) => vec![c],
            None => self.state.layers.keys().cloned().collect(),
        };
        let targets = chains
            .into_iter()
            .map(|c| self.layer_target(&c).map(|(id, diff)| (c, id, diff)))
            .collect::<Result<Vec<_>, EngineError>>();
        match targets {
            Ok(targets) => {
                let driver = Arc::clone(&self.driver);
                let work = move || {
                    Ok(targets
                        .iter()
                        .map(|(c, id, diff)| crate::layers::verify(driver.as_ref(), c, *id, diff))
                        .collect())
                };
                self.workers.run("verify", work, answer(reply));
            }
            Err(e) => batch.reply(reply, Err(e)),
        }
    }

    /// A layer's snapshot id and DiffID.
    pub(super) fn layer_target(
        &self,
        chain_id: &str,
    ) -> Result<(SnapshotId, cairn_layer::Digest), EngineError> {
        let layer = self.state.layer(chain_id)?;
        let diff = crate::layers::parse_digest(&layer.diff_id)?;
        Ok((self.state.get(chain_id)?.id, diff))
    }
}

/// Delivers a worker's answer to its client; a panicked job becomes an error for it.
fn answer<T: Send + 'static>(
    reply: Reply<T>,
) -> impl FnOnce(Result<Result<T, EngineError>, Panicked>) + Send + 'static {
    move |r| {
        let _ = reply.send(r.unwrap_or_else(|p| Err(p.into())));
    }
}
