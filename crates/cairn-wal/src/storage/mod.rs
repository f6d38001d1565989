//! The narrow IO surface the log (and the engine's checkpoint) is written against.
//!
//! Two implementations: [`FsStorage`], the real file system, and [`SimStorage`], an in-memory
//! file system that tracks what is durable and can cut power, so crash tests can explore every
//! outcome a real disk could produce.

mod fs;
mod sim;

pub use fs::FsStorage;
pub use sim::{SimFaults, SimStorage};

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::Path;

/// File-system operations, by path. Directory entries created, renamed or removed are durable
/// only after [`Storage::sync_dir`] on the directory that holds them.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries in a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Open an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Create a file, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// An open file. Contents written are durable only after [`StorageFile::sync_data`].
pub trait StorageFile: Send + fmt::Debug {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the file's contents and length become durable.
    fn sync_data(&mut self) -> io::Result<()>;
    fn size_bytes(&self) -> io::Result<u64>;
    fn set_size_bytes(&mut self, len: u64) -> io::Result<()>;

    /// Read exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
