//! Small file helpers: private key files are created with mode 0600, identity files are replaced
//! atomically (write a temporary file in the same directory, then rename) so that a watcher never
//! reads half a file.

use std::fs::OpenOptions;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IdentityError;

/// Mode for private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode for certificates and other public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|e| IdentityError::io(path, e))
}

pub(crate) fn read_string(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::io(path, e))
}

pub(crate) fn create_dir_all(dir: &Path) -> Result<(), IdentityError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o755);
    }
    b.create(dir).map_err(|e| IdentityError::io(dir, e))
}

fn open_options(mode: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    o.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    o
}

/// Create `path`, failing with `AlreadyExists` if it exists.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), std::io::Error> {
    let mut f = open_options(mode).create_new(true).open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Replace `path` atomically with `contents` and the given mode.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_new(&tmp, contents, mode).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(IdentityError::io(path, e));
    }
    Ok(())
}
