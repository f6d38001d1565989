//! Requests into operations: each command that changes the state becomes the record that
//! begins (or is) its transaction, and its reply goes to the batch's outbox or waits for the
//! transaction to complete. Read-only requests are answered by `queries`.

use super::batch::{Batch, Deferred, Outgoing, Waiter, With};
use super::{now_ns, Core};
use crate::api::{ImportOptions, Imported, Info, Input, Reply, Request};
use crate::error::EngineError;
use cairn_state::types::{Kind, Mount, SnapshotId};
use cairn_state::{Effect, Labels, Op, Stage, StateError};

impl Core {
    pub(super) fn handle_request(&mut self, req: Request, batch: &mut Batch) {
        if let Some(e) = self.failed_error() {
            return req.refuse(e);
        }
        match req {
            Request::Create {
                key,
                parent,
                kind,
                labels,
                reply,
            } => self.create(key, parent, kind, labels, reply, batch),
            Request::Commit {
                name,
                key,
                labels,
                reply,
            } => {
                let op = Op::BeginCommit {
                    key,
                    name,
                    labels,
                    time_ns: now_ns(),
                };
                match self.accept(op, batch) {
                    Ok((txid, effects)) => {
                        // A small tree is sealed in this batch, on this thread, and the
                        // completion journaled with the beginning (core/inline.rs).
                        if let Some(id) = self.inline_seal(txid, &effects) {
                            batch.inline_seals.push((id, txid, Waiter::Done { reply }));
                            return;
                        }
                        batch.effects(effects);
                        batch
                            .outbox
                            .push(Outgoing::Begun(txid, Waiter::Done { reply }));
                    }
                    Err(e) => batch.reply(reply, Err(e.into())),
                }
            }
            Request::Remove { key, reply } => match self.accept(Op::Remove { key }, batch) {
                Ok((_, effects)) => {
                    let mut reply = Some(reply);
                    for e in effects {
                        batch.effects.push((e, With::reply(reply.take())));
                    }
                    if let Some(reply) = reply {
                        batch.reply(reply, Ok(()));
                    }
                }
                Err(e) => batch.reply(reply, Err(e.into())),
            },
            Request::Update {
                info,
                fieldpaths,
                reply,
            } => {
                let result = self.update_labels(&info, &fieldpaths).and_then(|labels| {
                    let op = Op::Update {
                        key: info.key.clone(),
                        labels,
                        time_ns: now_ns(),
                    };
                    self.accept(op, batch).map_err(EngineError::from)
                });
                match result {
                    Ok(_) => {
                        let info = self
                            .state
                            .get(&info.key)
                            .map(|snap| Info::of(&info.key, snap))
                            .map_err(EngineError::from);
                        batch.reply(reply, info);
                    }
                    Err(e) => batch.reply(reply, Err(e)),
                }
            }
            Request::Cleanup { reply } => batch
                .outbox
                .push(Outgoing::Deferred(Deferred::Cleanup(reply))),
            Request::Fsck {
                repair,
                verify,
                reply,
            } => batch.outbox.push(Outgoing::Deferred(Deferred::Fsck {
                repair,
                verify,
                reply,
            })),
            Request::Checkpoint { reply } => batch.outbox.push(Outgoing::Checkpoint(reply)),
            Request::ImportLayer {
                input,
                options,
                hold,
                reply,
            } => self.begin_import(input, options, hold, reply, batch),
            Request::Detached(d) => self.handle_detached(d, batch),
            Request::RemoveLayer { chain_id, reply } => {
                self.journal_op(Op::RemoveLayer { chain_id }, reply, batch)
            }
            Request::PutImage {
                name,
                top,
                manifest_digest,
                config_digest,
                kept,
                reply,
            } => {
                let time_ns = now_ns();
                let op = match kept {
                    None => Op::PutImage {
                        name,
                        top,
                        manifest_digest,
                        config_digest,
                        time_ns,
                    },
                    Some(cairn_state::Kept { config, manifest }) => Op::PutImageKept {
                        name,
                        top,
                        manifest_digest,
                        config_digest,
                        time_ns,
                        config,
                        manifest,
                    },
                };
                self.journal_op(op, reply, batch);
            }
            Request::PutImageConfig {
                name,
                config,
                manifest,
                reply,
            } => {
                let op = Op::PutImageConfig {
                    name,
                    config,
                    manifest,
                };
                self.journal_op(op, reply, batch);
            }
            Request::RemoveImage { name, reply } => {
                self.journal_op(Op::RemoveImage { name }, reply, batch)
            }
            Request::CreateContainer {
                name,
                layer,
                image,
                reply,
            } => self.create_container(name, layer, image, reply, batch),
            Request::RemoveContainer { name, reply } => {
                self.journal_op(Op::RemoveContainer { name }, reply, batch)
            }
            // Reads: answered from the state now, or measured on a worker.
            Request::Stat { key, reply } => batch.reply(reply, self.stat(&key)),
            Request::Mounts { key, reply } => batch.reply(reply, self.active_mounts(&key)),
            Request::Walk { filters, reply } => batch.reply(reply, self.walk(&filters)),
            Request::Layers { reply } => batch.reply(reply, self.layer_infos()),
            Request::Images { reply } => {
                batch.reply(reply, crate::layers::image_infos(&self.state))
            }
            Request::ImageKept { name, reply } => {
                let kept = match self.state.images.get(&name) {
                    Some(image) => Ok(image.kept.clone()),
                    None => Err(cairn_state::StateError::NotFound { key: name }.into()),
                };
                batch.reply(reply, kept)
            }
            Request::Containers { reply } => batch.reply(reply, Ok(self.container_infos())),
            Request::Usage { key, reply } => self.usage(key, reply, batch),
            Request::ExportLayer {
                chain_id,
                out,
                reply,
            } => self.export(&chain_id, out, reply, batch),
            Request::Diff { key, out, reply } => self.diff(&key, out, reply, batch),
            Request::Verify { chain_id, reply } => self.verify(chain_id, reply, batch),
            Request::Changes { key, reply } => self.changes(key, reply, batch),
            Request::DiffUsage { key, reply } => self.diff_usage(key, reply, batch),
            Request::Mount { key, target, reply } => self.mount_ref(key, target, reply, batch),
            Request::Unmount { target, reply } => self.unmount_ref(target, reply, batch),
            Request::MountRefs { reply } => batch.reply(reply, Ok(self.mount_infos())),
        }
    }

    fn create(
        &mut self,
        key: String,
        parent: Option<String>,
        kind: Kind,
        labels: Labels,
        reply: Reply<Vec<Mount>>,
        batch: &mut Batch,
    ) {
        let op = Op::BeginCreate {
            key: key.clone(),
            parent,
            kind,
            id: SnapshotId(self.state.next_id),
            labels,
            time_ns: now_ns(),
        };
        let id = SnapshotId(self.state.next_id);
        match self.accept(op, batch) {
            Ok((txid, effects)) => {
                // A tree that copies nothing is made in this batch, on this thread, and its
                // completion journaled with its beginning (core/inline.rs).
                if let Some(tree) = self.inline_tree(txid, id, &effects) {
                    batch.inline.push((tree, Waiter::Mounts { key, reply }));
                    return;
                }
                batch.effects(effects);
                batch
                    .outbox
                    .push(Outgoing::Begun(txid, Waiter::Mounts { key, reply }));
            }
            Err(e) => batch.reply(reply, Err(e.into())),
        }
    }

    fn create_container(
        &mut self,
        name: String,
        layer: Option<String>,
        image: Option<String>,
        reply: Reply<Vec<Mount>>,
        batch: &mut Batch,
    ) {
        let layer = match (layer, image) {
            (Some(layer), _) => Ok(layer),
            (None, Some(image)) => self
                .state
                .images
                .get(&image)
                .map(|i| i.top.clone())
                .ok_or(StateError::NotFound { key: image }),
            (None, None) => Err(StateError::InvalidArgument {
                reason: cairn_state::Invalid::EmptyKey,
            }),
        };
        let op = layer.map(|layer| Op::BeginContainer {
            name: name.clone(),
            layer,
            init_id: SnapshotId(self.state.next_id),
            time_ns: now_ns(),
        });
        match op.and_then(|op| self.accept(op, batch)) {
            Ok((txid, effects)) => {
                batch.effects(effects);
                batch
                    .outbox
                    .push(Outgoing::Begun(txid, Waiter::Mounts { key: name, reply }));
            }
            Err(e) => batch.reply(reply, Err(e.into())),
        }
    }

    /// A one-record command with no worker step (recording an image, removing a layer, an
    /// image or a container): journal it, then reply, once its deletions are done if its
    /// effects delete trees (the last `Delete` effect carries the reply).
    fn journal_op(&mut self, op: Op, reply: Reply<()>, batch: &mut Batch) {
        match self.accept(op, batch) {
            Ok((_, effects)) => {
                let mut reply = Some(reply);
                let last_delete = effects
                    .iter()
                    .rposition(|e| matches!(e, Effect::Delete { .. }));
                for (i, e) in effects.into_iter().enumerate() {
                    let r = if Some(i) == last_delete {
                        reply.take()
                    } else {
                        None
                    };
                    batch.effects.push((e, With::reply(r)));
                }
                if let Some(reply) = reply {
                    batch.reply(reply, Ok(()));
                }
            }
            Err(e) => batch.reply(reply, Err(e.into())),
        }
    }

    fn begin_import(
        &mut self,
        input: Input,
        options: ImportOptions,
        hold: Option<String>,
        reply: Reply<Imported>,
        batch: &mut Batch,
    ) {
        // A hold is checked now, before any byte is read (and again at completion).
        if let Some(h) = &hold {
            if let Err(e) = cairn_state::validate_key(h) {
                return batch.reply(reply, Err(e.into()));
            }
        }
        let parent = match &options.parent {
            None => Ok(None),
            Some(p) => self
                .layer_target(p)
                .and_then(|(id, _)| Ok(Some((id, crate::layers::parse_digest(p)?)))),
        };
        let parent = match parent {
            Ok(p) => p,
            Err(e) => return batch.reply(reply, Err(e)),
        };
        // A known DiffID whose layer exists: nothing to read, nothing to write (with a hold,
        // the completion record still has to carry it).
        if let (Some(expected), None) = (&options.expected_diff_id, &hold) {
            let chain =
                cairn_layer::chain_id(parent.as_ref().map(|(_, d)| d), expected).to_string();
            if let Ok(layer) = self.state.layer(&chain) {
                if layer.pinned || !options.pin {
                    let imported = Imported {
                        chain_id: chain.clone(),
                        diff_id: layer.diff_id.clone(),
                        size_bytes: layer.size_bytes,
                        existed: true,
                    };
                    return batch.reply(reply, Ok(imported));
                }
            }
        }
        let op = Op::BeginImport {
            id: SnapshotId(self.state.next_id),
            parent: options.parent.clone(),
            pin: options.pin,
            time_ns: now_ns(),
        };
        match self.accept(op, batch) {
            Ok((txid, effects)) => {
                // The caller's input travels with the import's staging effect.
                let mut job = Some(crate::layers::ImportJob {
                    input,
                    expected: options.expected_diff_id,
                    parent,
                    hold,
                });
                for e in effects {
                    let with = match (&e, job.take()) {
                        (
                            Effect::Stage {
                                stage: Stage::Import { .. },
                                ..
                            },
                            Some(job),
                        ) => With::Import(job),
                        (_, taken) => {
                            job = taken;
                            With::Nothing
                        }
                    };
                    batch.effects.push((e, with));
                }
                batch
                    .outbox
                    .push(Outgoing::Begun(txid, Waiter::Layer { reply }));
            }
            Err(e) => batch.reply(reply, Err(e.into())),
        }
    }

    /// containerd's update: `labels` replaces all labels, `labels.<k>` sets or removes one;
    /// no field paths means all mutable fields (the labels).
    fn update_labels(&self, info: &Info, fieldpaths: &[String]) -> Result<Labels, EngineError> {
        let current = self.state.get(&info.key)?;
        if fieldpaths.is_empty() {
            return Ok(info.labels.clone());
        }
        let mut labels = current.labels.clone();
        for path in fieldpaths {
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => labels.insert(k.to_owned(), v.clone()),
                    None => labels.remove(k),
                };
            } else {
                return Err(StateError::InvalidArgument {
                    reason: cairn_state::Invalid::FieldNotUpdatable { path: path.clone() },
                }
                .into());
            }
        }
        Ok(labels)
    }
}
