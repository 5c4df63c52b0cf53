//! Files of the target (its state directory and granted directories), with
//! errors turned into [`PluginError`]s that name the path.

use crate::PluginError;
use crate::bindings::rewind::plugin::files as host;
pub use crate::bindings::rewind::plugin::files::{FileError, FileInfo};

fn plugin_error(path: &str, e: FileError) -> PluginError {
    match e {
        FileError::Denied(t) => PluginError::Denied(t),
        FileError::NotFound(t) => PluginError::NotFound(format!("{path}: {t}")),
        FileError::TooLarge(size) => {
            PluginError::Failed(format!("{path}: too large to read ({size} bytes)"))
        }
        FileError::Io(t) => PluginError::Failed(format!("{path}: {t}")),
    }
}

/// The whole contents of a file.
pub fn read(path: &str) -> Result<Vec<u8>, PluginError> {
    host::read(path).map_err(|e| plugin_error(path, e))
}

/// The contents of a file, or none when it does not exist.
pub fn read_if_exists(path: &str) -> Result<Option<Vec<u8>>, PluginError> {
    match host::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(FileError::NotFound(_)) => Ok(None),
        Err(e) => Err(plugin_error(path, e)),
    }
}

/// Replace a file atomically, keeping its mode and owner.
pub fn write(path: &str, contents: &[u8]) -> Result<(), PluginError> {
    host::write(path, contents).map_err(|e| plugin_error(path, e))
}

/// Replace a file's contents in place, keeping its inode (a file a
/// container bind-mounts by itself). Not atomic: keep a copy first.
pub fn write_in_place(path: &str, contents: &[u8]) -> Result<(), PluginError> {
    host::write_in_place(path, contents).map_err(|e| plugin_error(path, e))
}

/// Remove a file; a missing file is not an error.
pub fn remove(path: &str) -> Result<(), PluginError> {
    host::remove(path).map_err(|e| plugin_error(path, e))
}

/// Metadata, or none when the path does not exist.
pub fn stat(path: &str) -> Result<Option<FileInfo>, PluginError> {
    host::stat(path).map_err(|e| plugin_error(path, e))
}

/// Sorted entry names of a directory.
pub fn list(dir: &str) -> Result<Vec<String>, PluginError> {
    host::read_dir(dir).map_err(|e| plugin_error(dir, e))
}

/// SHA-256 of a file, computed by the host.
pub fn sha256(path: &str) -> Result<String, PluginError> {
    host::sha256(path).map_err(|e| plugin_error(path, e))
}

/// Where a symbolic link points.
pub fn read_link(path: &str) -> Result<String, PluginError> {
    host::read_link(path).map_err(|e| plugin_error(path, e))
}

/// Point a symbolic link at `target`, replacing it atomically.
pub fn set_link(link: &str, target: &str) -> Result<(), PluginError> {
    host::set_link(link, target).map_err(|e| plugin_error(link, e))
}
