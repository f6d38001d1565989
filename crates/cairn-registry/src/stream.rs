//! A blob followed while it is fetched: the fetching thread writes the HTTP body into the
//! spool file and publishes how far it got; the import reads the same file behind it (from the
//! page cache), so a layer is extracted while it downloads and the spool keeps every byte for a
//! resume.
//!
//! The reader never reports the end of the blob before the fetcher has checked the blob's
//! size and digest: a truncated or wrong blob ends the import with an error instead, and the
//! engine (which reads its input to the end before it journals anything) records nothing.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How the fetch of a followed blob ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte is in, and they hash to the blob's digest.
    Verified,
    Failed,
}

#[derive(Debug, Default)]
struct State {
    /// The file the fetcher writes (`None` until it opens one, or when the blob was whole in
    /// the spool already).
    file: Option<Arc<File>>,
    /// Bump on every start over (a registry that ignored `Range`, a torn partial): bytes a
    /// reader had from an earlier generation are no longer the blob's.
    generation: u32,
    /// Bytes of the current generation written (and hashed) so far.
    written: u64,
    end: Option<End>,
    /// An import of this pull reads this blob (as it comes, or later from the same file); the
    /// fetcher need not make it durable under its whole name (the import consumes it; a
    /// resume re-hashes the partial anyway).
    attached: bool,
}

/// The fetcher's side and the reader's side of one blob.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    state: Mutex<State>,
    changed: Condvar,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetcher (re)starts writing `file` from byte `offset` (bytes before it are kept).
    pub(crate) fn start(&self, file: &File, offset: u64) {
        let mut s = self.lock();
        s.file = file.try_clone().ok().map(Arc::new);
        s.generation += 1;
        s.written = if s.file.is_some() { offset } else { 0 };
        drop(s);
        self.changed.notify_all();
    }

    /// The file was emptied: everything before is void.
    pub(crate) fn restart(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.written = 0;
        drop(s);
        self.changed.notify_all();
    }

    pub(crate) fn advance(&self, written: u64) {
        let mut s = self.lock();
        s.written = written;
        drop(s);
        self.changed.notify_all();
    }

    pub(crate) fn finish(&self, end: End) {
        let mut s = self.lock();
        s.end = Some(end);
        drop(s);
        self.changed.notify_all();
    }

    /// An import of this pull will read the blob (now or once the layers under it are in):
    /// the fetcher owes it no sync or whole name (see `attached`).
    pub(crate) fn attach(&self) {
        self.lock().attached = true;
    }

    pub(crate) fn attached(&self) -> bool {
        self.lock().attached
    }

    pub(crate) fn end(&self) -> Option<End> {
        self.lock().end
    }

    /// A reader of the blob; `complete` is where a blob whole in the spool already is.
    pub(crate) fn follow(self: &Arc<Self>, complete: PathBuf, cancel: Arc<AtomicBool>) -> Follow {
        self.lock().attached = true;
        Follow {
            stream: Arc::clone(self),
            complete,
            cancel,
            file: None,
            generation: 0,
            pos: 0,
            reset: false,
        }
    }
}

/// Reads a followed blob, blocking until the fetcher has written more.
#[derive(Debug)]
pub(crate) struct Follow {
    stream: Arc<Stream>,
    complete: PathBuf,
    cancel: Arc<AtomicBool>,
    file: Option<Arc<File>>,
    generation: u32,
    pos: u64,
    /// The fetch started over after this reader had passed bytes on.
    pub(crate) reset: bool,
}

/// The reader's handle on whether the fetch restarted under it (the import is then redone
/// from the verified spool file).
#[derive(Clone, Debug)]
pub(crate) struct ResetFlag(Arc<AtomicBool>);

impl ResetFlag {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// [`Follow`] as a boxed reader that reports a restart through a flag the puller keeps.
pub(crate) struct Followed {
    inner: Follow,
    reset: Arc<AtomicBool>,
}

impl Follow {
    pub(crate) fn boxed(self) -> (Box<dyn Read + Send>, ResetFlag) {
        let reset = Arc::new(AtomicBool::new(false));
        let flag = ResetFlag(Arc::clone(&reset));
        (Box::new(Followed { inner: self, reset }), flag)
    }
}

impl Read for Followed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.inner.read(buf);
        if self.inner.reset {
            self.reset.store(true, Ordering::Relaxed);
        }
        r
    }
}

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_owned())
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut s = self.stream.lock();
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(io_err("the pull was cancelled"));
            }
            if s.generation != self.generation {
                if self.pos > 0 {
                    self.reset = true;
                    return Err(io_err("the blob's fetch started over"));
                }
                self.generation = s.generation;
                self.file = s.file.clone();
            }
            if self.file.is_some() && self.pos < s.written {
                let n = (s.written - self.pos).min(buf.len() as u64) as usize;
                drop(s);
                let file = self.file.as_ref().ok_or_else(|| io_err("no spool file"))?;
                let got = file.read_at(&mut buf[..n], self.pos)?;
                if got == 0 {
                    // Emptied under the read: the fetch started over.
                    self.reset = true;
                    return Err(io_err("the spool file is shorter than was written"));
                }
                self.pos += got as u64;
                return Ok(got);
            }
            match s.end {
                Some(End::Verified) if self.file.is_none() => {
                    // The blob was whole in the spool before this pull: read it from there.
                    drop(s);
                    let f = File::open(&self.complete)?;
                    self.file = Some(Arc::new(f));
                    self.pos = 0;
                    s = self.stream.lock();
                    s.written = std::fs::metadata(&self.complete)?.len();
                    s.generation = self.generation;
                }
                // Every byte passed on, and they are the blob's.
                Some(End::Verified) => return Ok(0),
                Some(End::Failed) => return Err(io_err("the blob's fetch failed")),
                None => {
                    // Woken by the fetcher; the timeout only rechecks `cancel`.
                    s = self
                        .stream
                        .changed
                        .wait_timeout(s, Duration::from_millis(200))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &std::path::Path, name: &str, bytes: &[u8]) -> File {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        File::open(&path).unwrap()
    }

    fn reader(stream: &Arc<Stream>, dir: &std::path::Path) -> (Box<dyn Read + Send>, ResetFlag) {
        stream
            .follow(dir.join("whole"), Arc::new(AtomicBool::new(false)))
            .boxed()
    }

    #[test]
    fn the_end_comes_only_with_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(Stream::default());
        let (mut r, reset) = reader(&stream, dir.path());
        assert!(stream.attached());
        let f = file_with(dir.path(), "p", b"hello world");
        let writer = {
            let stream = Arc::clone(&stream);
            std::thread::spawn(move || {
                stream.start(&f, 0);
                stream.advance(5);
                std::thread::sleep(Duration::from_millis(50));
                stream.advance(11);
                std::thread::sleep(Duration::from_millis(50));
                stream.finish(End::Verified);
            })
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        writer.join().unwrap();
        assert_eq!(out, b"hello world");
        assert!(!reset.get());
    }

    #[test]
    fn a_failed_fetch_is_an_error_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(Stream::default());
        let (mut r, _) = reader(&stream, dir.path());
        let f = file_with(dir.path(), "p", b"hello world");
        stream.start(&f, 0);
        stream.advance(11);
        stream.finish(End::Failed);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out, b"hello world", "the bytes came, the end did not");
    }

    #[test]
    fn a_restart_after_bytes_were_read_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(Stream::default());
        let (mut r, reset) = reader(&stream, dir.path());
        let f = file_with(dir.path(), "p", b"old bytes");
        stream.start(&f, 0);
        stream.advance(9);
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        stream.restart();
        assert!(r.read(&mut buf).is_err());
        assert!(reset.get());
    }

    #[test]
    fn a_restart_before_any_byte_follows_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(Stream::default());
        let (mut r, reset) = reader(&stream, dir.path());
        let old = file_with(dir.path(), "old", b"stale");
        stream.start(&old, 0);
        let new = file_with(dir.path(), "new", b"fresh");
        stream.start(&new, 0);
        stream.advance(5);
        stream.finish(End::Verified);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"fresh");
        assert!(!reset.get());
    }

    #[test]
    fn a_blob_whole_before_the_pull_is_read_from_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("whole"), b"spooled earlier").unwrap();
        let stream = Arc::new(Stream::default());
        let (mut r, _) = reader(&stream, dir.path());
        stream.finish(End::Verified);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"spooled earlier");
    }
}
