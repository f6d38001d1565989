//! `containerd.services.snapshots.v1.Snapshots` over the engine.

use crate::bridge::Bridge;
use crate::convert;
use cairn_engine::Command;
use cairn_state::types::Kind;
use containerd_snapshots::api::snapshots::v1 as pb;
use containerd_snapshots::api::snapshots::v1::snapshots_server::Snapshots;
use containerd_snapshots::tonic::{self, Request, Response, Status};
use futures::stream::BoxStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The label containerd sets on an extraction snapshot: the ChainID it will commit it as.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// List answers in messages of at most this many snapshots (as containerd's own server does).
const LIST_BATCH: usize = 100;

#[derive(Debug)]
pub struct SnapshotService {
    bridge: Bridge,
    next_request: Arc<AtomicU64>,
}

impl SnapshotService {
    pub fn new(bridge: Bridge) -> SnapshotService {
        SnapshotService {
            bridge,
            next_request: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Runs one request in a span naming it, the method and the key, and logs its outcome.
    async fn logged<T>(
        &self,
        method: &'static str,
        key: &str,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("rpc", request, method, key);
        async move {
            let start = Instant::now();
            // The method leads the message, as in containerd's own errors ("remove: ...").
            let result = fut
                .await
                .map_err(|s| Status::new(s.code(), format!("{method}: {}", s.message())));
            let elapsed_us = start.elapsed().as_micros() as u64;
            match &result {
                Ok(_) => tracing::debug!(elapsed_us, "ok"),
                Err(s)
                    if s.code() == tonic::Code::Internal
                        || s.code() == tonic::Code::Unavailable =>
                {
                    tracing::warn!(elapsed_us, code = ?s.code(), error = s.message(), "failed")
                }
                Err(s) => {
                    tracing::debug!(elapsed_us, code = ?s.code(), error = s.message(), "refused")
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Prepare with the snapshot-ref label of a layer cairn already holds (a layer loaded with
    /// `cairn image load`, whose snapshot is named by its ChainID, or one an earlier prepare
    /// answered this way): answer as containerd's remote snapshotters do, AlreadyExists, so
    /// containerd skips fetching and applying it. containerd then walks for a committed
    /// snapshot with `labels."containerd.io/snapshot.ref"==REF,parent==PARENT`, so the held
    /// snapshot gets that label (and the prepare's labels it lacks) first.
    async fn already_held(
        &self,
        parent: Option<&str>,
        labels: &cairn_state::Labels,
    ) -> Result<Option<Status>, Status> {
        let Some(target) = labels.get(SNAPSHOT_REF_LABEL).cloned() else {
            return Ok(None);
        };
        let parent = parent.map(str::to_owned);
        let labels = labels.clone();
        let held = self
            .bridge
            .call(move |e| {
                let info = match e.stat(&target) {
                    Ok(i) => i,
                    Err(err) if err.is_not_found() => return Ok(None),
                    Err(err) => return Err(err),
                };
                if info.kind != cairn_state::types::Kind::Committed || info.parent != parent {
                    return Ok(None);
                }
                let missing: Vec<String> = labels
                    .keys()
                    .filter(|k| {
                        // The held snapshot's own labels win, except the ref, which must match.
                        !info.labels.contains_key(*k)
                            || (*k == SNAPSHOT_REF_LABEL && info.labels.get(*k) != Some(&target))
                    })
                    .map(|k| format!("labels.{k}"))
                    .collect();
                if !missing.is_empty() {
                    let mut wanted = info.clone();
                    for (k, v) in &labels {
                        wanted.labels.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    wanted
                        .labels
                        .insert(SNAPSHOT_REF_LABEL.to_owned(), target.clone());
                    let paths: Vec<&str> = missing.iter().map(String::as_str).collect();
                    e.update(wanted, &paths)?;
                }
                Ok(Some(target))
            })
            .await?;
        Ok(held.map(|t| {
            tracing::info!(target = %t, "layer already held: AlreadyExists");
            Status::already_exists(format!("target snapshot {t}: already exists"))
        }))
    }
}

type ListStream = BoxStream<'static, Result<pb::ListSnapshotsResponse, Status>>;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.logged("prepare", &r.key.clone(), async {
            let labels = convert::labels(r.labels);
            let parent = convert::parent(&r.parent).map(str::to_owned);
            if let Some(exists) = self.already_held(parent.as_deref(), &labels).await? {
                return Err(exists);
            }
            let mounts = self
                .bridge
                .submit(Command::create(r.key, parent, Kind::Active, labels))
                .await?;
            Ok(Response::new(pb::PrepareSnapshotResponse {
                mounts: convert::mounts(mounts),
            }))
        })
        .await
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.logged("view", &r.key.clone(), async {
            let parent = convert::parent(&r.parent).map(str::to_owned);
            let labels = convert::labels(r.labels);
            let mounts = self
                .bridge
                .submit(Command::create(r.key, parent, Kind::View, labels))
                .await?;
            Ok(Response::new(pb::ViewSnapshotResponse {
                mounts: convert::mounts(mounts),
            }))
        })
        .await
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        self.logged("mounts", &key.clone(), async {
            let mounts = self.bridge.submit(Command::mounts(key)).await?;
            Ok(Response::new(pb::MountsResponse {
                mounts: convert::mounts(mounts),
            }))
        })
        .await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.logged("commit", &r.key.clone(), async {
            let labels = convert::labels(r.labels);
            tracing::debug!(name = %r.name, "committing");
            self.bridge
                .submit(Command::commit(r.name, r.key, labels))
                .await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.logged("remove", &key.clone(), async {
            self.bridge.submit(Command::remove(key)).await?;
            Ok(Response::new(()))
        })
        .await
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        self.logged("stat", &key.clone(), async {
            let info = self.bridge.submit(Command::stat(key)).await?;
            Ok(Response::new(pb::StatSnapshotResponse {
                info: Some(convert::info(info)),
            }))
        })
        .await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else {
            return Err(Status::invalid_argument("update without info"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        self.logged("update", &info.name.clone(), async {
            // Only labels are mutable: the engine reads the key and the labels, and refuses any
            // other field path.
            let wanted = cairn_engine::Info {
                key: info.name,
                parent: None,
                kind: Kind::Active,
                labels: convert::labels(info.labels),
                created_ns: 0,
                updated_ns: 0,
            };
            let updated = self.bridge.submit(Command::update(wanted, paths)).await?;
            Ok(Response::new(pb::UpdateSnapshotResponse {
                info: Some(convert::info(updated)),
            }))
        })
        .await
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = request.into_inner().filters;
        self.logged("list", "", async {
            let infos = self.bridge.submit(Command::walk(filters)).await?;
            let mut batches = Vec::with_capacity(infos.len().div_ceil(LIST_BATCH));
            let mut infos = infos.into_iter().map(convert::info).peekable();
            while infos.peek().is_some() {
                let info: Vec<pb::Info> = infos.by_ref().take(LIST_BATCH).collect();
                batches.push(Ok(pb::ListSnapshotsResponse { info }));
            }
            let stream: ListStream = Box::pin(futures::stream::iter(batches));
            Ok(Response::new(stream))
        })
        .await
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        self.logged("usage", &key.clone(), async {
            let u = self.bridge.submit(Command::usage(key)).await?;
            Ok(Response::new(pb::UsageResponse {
                size: i64::try_from(u.size_bytes).unwrap_or(i64::MAX),
                inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
            }))
        })
        .await
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.logged("cleanup", "", async {
            let report = self.bridge.submit(Command::cleanup()).await?;
            tracing::debug!(
                snapshots = report.snapshots_removed.len(),
                staging = report.staging_removed.len(),
                "cleaned up"
            );
            Ok(Response::new(()))
        })
        .await
    }
}
