//! File-system helpers that keep the "nothing half-written" promise: atomic writes, hashing,
//! and unique temporary names.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other process or call will pick: pid, time and a counter.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// readers see either the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        unique_suffix()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir.unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Points `link` at `target`, replacing whatever `link` was, atomically.
pub fn symlink_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        link.file_name()
            .map_or("link".into(), |n| n.to_string_lossy()),
        unique_suffix()
    ));
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &tmp)?;
    #[cfg(not(unix))]
    fs::write(&tmp, target.to_string_lossy().as_bytes())?;
    fs::rename(&tmp, link).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Flushes a folder's entries (a rename is durable only once its folder is synced).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Size and blake3 hash (hex) of a file's content.
pub fn blake3_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Every regular file and symlink under `root`, as sorted paths relative to it.
pub fn list_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Total size of the regular files under `root`.
pub fn dir_size(root: &Path) -> u64 {
    list_files(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| fs::symlink_metadata(root.join(p)).ok())
        .map(|m| m.len())
        .sum()
}

/// What a file type is, in words, for messages about things that are not regular files.
pub fn kind_name(kind: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a link"
    } else if kind.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

/// The regular files under a local corpus folder, as sorted relative paths, for hashing and
/// copying it: links to files are followed, links to folders are not (a link back up would
/// never end), and anything else (a FIFO, a device, a socket) is an error naming it, as
/// reading it could block forever or never end. More than `limit` files is an error too.
pub fn corpus_files(root: &Path, limit: usize) -> io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, limit: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, limit, out)?;
                continue;
            }
            let kind = fs::metadata(&path)?.file_type();
            if !kind.is_file() {
                let what = if kind.is_dir() {
                    "a link to a folder"
                } else {
                    kind_name(&kind)
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is {what}, not a file", path.display()),
                ));
            }
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            if out.len() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} holds more than {limit} files; point the mirror at the corpus folder itself",
                        root.display()
                    ),
                ));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, limit, &mut out)?;
    out.sort();
    Ok(out)
}

/// `text` with its control characters escaped (`\n`, `\u{0}`): a message that quotes a file's
/// content (a name, a value a parser choked on) stays on the one line of an error.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Human-readable byte counts: `1.4 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_400_000), "1.4 MB");
    }
}
