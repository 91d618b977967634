//! Reading and writing files in the rollout directory without following links.
//!
//! Anyone who can write the directory could otherwise point `passwd.yaml` at `/etc/passwd`
//! (its content then came back as the YAML error in the log, the status file and the
//! unauthenticated `GET /v1/rollouts`), or plant a link at a status file's temp name to make
//! the sidecar write through it. So: files are opened with `O_NOFOLLOW` and checked to be
//! regular files on the open descriptor (no gap between check and read), read up to a bound
//! known before reading, and written through a fresh temp file (`O_EXCL`: never an existing
//! file or link) renamed over the target (a rename replaces a link, it does not follow it).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file was not read. The messages name what is wrong, never the content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is gone (vanished between the listing and the open): look again next time.
    #[error("not found")]
    NotFound,
    /// A symbolic link.
    #[error("a symbolic link: links are not followed, the file is not read")]
    Link,
    /// A directory, FIFO, socket or device.
    #[error("not a regular file: not read")]
    NotRegular,
    /// Over `max` bytes.
    #[error("{size} bytes, over the limit of {max} bytes: not read")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// Cannot be opened or read.
    #[error("cannot read: {0}")]
    Io(io::ErrorKind),
}

/// Reads `path` if it is a regular file (not a link) of at most `max` bytes.
pub fn read_regular(path: &Path, max: usize) -> Result<Vec<u8>, ReadError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, freezing the
    // scan; the fstat below then refuses it. Regular files ignore the flag.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::Link,
            _ if e.kind() == io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e.kind()),
        })?;
    let meta = file.metadata().map_err(|e| ReadError::Io(e.kind()))?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max as u64 {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    // The file may grow after the fstat: never read more than `max + 1` bytes.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(e.kind()))?;
    if bytes.len() > max {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes`: written to `.NAME.tmp` beside it, created fresh (an existing
/// file or link there is removed first, and `O_EXCL` refuses one that reappears), then
/// renamed over `path`.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f: File| {
            f.write_all(bytes)?;
            f.sync_data()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rollgate-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_fifos_and_large_files_are_not_read() {
        let d = dir("read");
        let secret = d.join("secret");
        std::fs::write(&secret, "hunter2").unwrap();
        std::os::unix::fs::symlink(&secret, d.join("link.yaml")).unwrap();
        assert!(matches!(
            read_regular(&d.join("link.yaml"), 100),
            Err(ReadError::Link)
        ));
        let fifo = d.join("fifo.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_regular(&fifo, 100),
            Err(ReadError::NotRegular)
        ));
        assert!(matches!(read_regular(&d, 100), Err(ReadError::NotRegular)));
        assert!(matches!(
            read_regular(&secret, 3),
            Err(ReadError::TooLarge { size: 7, max: 3 })
        ));
        assert_eq!(read_regular(&secret, 7).unwrap(), b"hunter2");
        assert!(matches!(
            read_regular(&d.join("gone"), 7),
            Err(ReadError::NotFound)
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replace_never_writes_through_a_link() {
        let d = dir("write");
        let outside = d.join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let target = d.join("a.status.json");
        std::os::unix::fs::symlink(&outside, d.join(".a.status.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        replace(&target, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");
        assert!(!std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        let _ = std::fs::remove_dir_all(&d);
    }
}
