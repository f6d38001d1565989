//! Where an image's files come from: an OCI layout directory, or a tar archive (`docker save`,
//! OCI archive) indexed once so each file can be read by seeking, never by holding the
//! archive in memory.

use super::error::ImageError;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// JSON documents (manifests, configs, indexes) are read whole; bound them.
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// Symlinks inside an archive are followed at most this many times.
const MAX_LINK_HOPS: usize = 8;

#[derive(Debug)]
pub(crate) enum Entry {
    File { offset: u64, size: u64 },
    Link { target: String },
}

#[derive(Debug)]
pub(crate) enum Source {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        entries: BTreeMap<String, Entry>,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.display().to_string();
    move |source| ImageError::Io { op, path, source }
}

/// `a/./b/../c` → `a/c`; names that climb out of the archive root are refused.
fn clean(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(io("stat", path))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io("open", path))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = BTreeMap::new();
        let bad = |reason: String| ImageError::Format {
            path: path.display().to_string(),
            reason,
        };
        // Seeking over each file's data: indexing reads the headers only, not the layers
        // (a whole extra pass over the archive before the first layer could start).
        for entry in archive.entries_with_seek().map_err(io("read", path))? {
            let entry = entry.map_err(|e| bad(format!("tar: {e}")))?;
            let name = entry.path().map_err(|e| bad(format!("tar name: {e}")))?;
            let Some(name) = clean(&name.to_string_lossy()) else {
                continue;
            };
            let header = entry.header();
            match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = header.size().map_err(|e| bad(format!("tar size: {e}")))?;
                    entries.insert(
                        name,
                        Entry::File {
                            offset: entry.raw_file_position(),
                            size,
                        },
                    );
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|t| t.to_string_lossy().into_owned());
                    if let Some(target) = target {
                        let dir = Path::new(&name)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if let Some(target) = clean(&format!("{dir}/{target}")) {
                            entries.insert(name, Entry::Link { target });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Source::Archive {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) | Source::Archive { path: p, .. } => p.display().to_string(),
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Archive { .. } => self.locate(name).is_ok(),
        }
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), ImageError> {
        let Source::Archive { entries, .. } = self else {
            unreachable!("only archives are indexed")
        };
        let mut name = clean(name).ok_or_else(|| ImageError::Missing {
            path: name.to_owned(),
        })?;
        for _ in 0..MAX_LINK_HOPS {
            match entries.get(&name) {
                Some(Entry::File { offset, size }) => return Ok((*offset, *size)),
                Some(Entry::Link { target }) => name = target.clone(),
                None => break,
            }
        }
        Err(ImageError::Missing { path: name })
    }

    /// A file of the image as a stream, with its size.
    pub fn open_file(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        match self {
            Source::Dir(dir) => {
                let clean_name = clean(name).ok_or_else(|| ImageError::Missing {
                    path: name.to_owned(),
                })?;
                let path = dir.join(clean_name);
                let file = File::open(&path).map_err(|_| ImageError::Missing {
                    path: name.to_owned(),
                })?;
                let size = file.metadata().map_err(io("stat", &path))?.len();
                Ok((Box::new(file), size))
            }
            Source::Archive { path, .. } => {
                let (offset, size) = self.locate(name)?;
                let mut file = File::open(path).map_err(io("open", path))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(io("seek", path))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// A small file (JSON) read whole, bounded by [`MAX_JSON_BYTES`].
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let (mut r, size) = self.open_file(name)?;
        if size > MAX_JSON_BYTES {
            return Err(ImageError::Format {
                path: name.to_owned(),
                reason: format!("{size} bytes, over the {MAX_JSON_BYTES}-byte limit for metadata"),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.read_to_end(&mut buf).map_err(|source| ImageError::Io {
            op: "read",
            path: name.to_owned(),
            source,
        })?;
        Ok(buf)
    }
}
