//! The download stage: fetches the corpus files from the first mirror that works, resumes
//! interrupted transfers with HTTP range requests, checks the sha256 before anything is unpacked,
//! and unpacks tarballs without letting any entry leave the corpus folder.
//!
//! Output (a [`Corpus`]): `files/` with the fetched files (archives and local folders spread out
//! into it) and `corpus.json` saying where each file came from.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::pipeline::cache::{Artifact, ORIGINS_JSON};
use crate::pipeline::spec::{
    DownloadConfig, DownloadFile, MAX_MIRROR_FILES, is_http_mirror, local_mirror_path,
};
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};

/// The folder of an artifact holding the corpus files.
pub const FILES_DIR: &str = "files";
const CORPUS_JSON: &str = "corpus.json";

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("could not fetch {name}: {}", failures.join("; "))]
    AllMirrorsFailed { name: String, failures: Vec<String> },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing to unpack {archive}: entry `{entry}` {why}")]
    UnsafeEntry {
        archive: String,
        entry: String,
        why: &'static str,
    },
    #[error("cannot unpack {archive}: {message}")]
    BadArchive { archive: String, message: String },
    #[error("{name}: {path} already exists in the corpus (two files or archives provide it)")]
    Clash { name: String, path: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one corpus file came from, as `corpus.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRecord {
    pub name: String,
    pub mirror: String,
    /// sha256 of the fetched file (absent for a local folder).
    pub sha256: Option<String>,
    pub bytes: u64,
    pub unpacked: bool,
}

/// The download stage's artifact: the corpus files and where they came from.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub files_dir: PathBuf,
    pub sources: Vec<SourceRecord>,
}

impl Corpus {
    /// Reads the corpus of a download artifact.
    pub fn open(artifact: &Artifact) -> Result<Corpus, StageFailure> {
        let path = artifact.file(CORPUS_JSON);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let sources = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a corpus description: {e}", path.display()))?;
        Ok(Corpus {
            files_dir: artifact.file(FILES_DIR),
            sources,
        })
    }
}

/// The download stage.
pub struct Download;

impl Stage for Download {
    fn id(&self) -> StageId {
        StageId::Download
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let config = &cx.view.download()?.download;
        let files_dir = cx.out_dir.join(FILES_DIR);
        fs::create_dir_all(&files_dir).map_err(io_err(&files_dir))?;
        let fetcher = Fetcher::new(config)?;
        let mut records = Vec::new();
        let mut origins = BTreeMap::new();
        for file in &config.files {
            let fetched = fetcher.fetch(file, cx)?;
            note_origins(&file.file_name(), &fetched, &mut origins)?;
            records.push(place(file, fetched, &files_dir)?);
        }
        let json = serde_json::to_vec_pretty(&records).expect("records serialize");
        let corpus_json = cx.out_dir.join(CORPUS_JSON);
        fsutil::write_atomic(&corpus_json, &json).map_err(io_err(&corpus_json))?;
        if !origins.is_empty() {
            let json = serde_json::to_vec_pretty(&origins).expect("origins serialize");
            let path = cx.out_dir.join(ORIGINS_JSON);
            fsutil::write_atomic(&path, &json).map_err(io_err(&path))?;
        }

        let listed = fsutil::list_files(&files_dir).map_err(io_err(&files_dir))?;
        let bytes = fsutil::dir_size(&files_dir);
        let mut report = StageReport {
            summary: format!("{} files, {}", listed.len(), fsutil::human_bytes(bytes)),
            ..Default::default()
        };
        report.metrics.insert("files".into(), listed.len() as f64);
        report.metrics.insert("bytes".into(), bytes as f64);
        Ok(report)
    }
}

/// A file or folder obtained from a mirror, not yet placed in the corpus.
enum Fetched {
    /// A downloaded file in the scratch folder (moved into place).
    Downloaded {
        path: PathBuf,
        mirror: String,
        sha256: String,
    },
    /// A local file (copied into place).
    LocalFile {
        path: PathBuf,
        mirror: String,
        sha256: String,
    },
    /// A local folder (its contents are copied into the corpus).
    LocalDir { path: PathBuf, mirror: String },
}

/// Records which of the user's files each local file or folder entry of the corpus is a copy
/// of, so that a later stage's error names the user's file rather than the cache's copy.
fn note_origins(
    name: &str,
    fetched: &Fetched,
    origins: &mut BTreeMap<String, String>,
) -> Result<(), DownloadError> {
    let files = Path::new(FILES_DIR);
    match fetched {
        Fetched::LocalFile { path, .. } => {
            origins.insert(
                files.join(name).to_string_lossy().into_owned(),
                path.display().to_string(),
            );
        }
        Fetched::LocalDir { path, .. } => {
            for entry in fs::read_dir(path).map_err(io_err(path))? {
                let entry = entry.map_err(io_err(path))?;
                origins.insert(
                    files.join(entry.file_name()).to_string_lossy().into_owned(),
                    entry.path().display().to_string(),
                );
            }
        }
        Fetched::Downloaded { .. } => {}
    }
    Ok(())
}

/// Puts a fetched file into the corpus: archives are unpacked, folders spread out, files copied.
fn place(
    file: &DownloadFile,
    fetched: Fetched,
    files_dir: &Path,
) -> Result<SourceRecord, DownloadError> {
    let name = file.file_name();
    match fetched {
        Fetched::LocalDir { path, mirror } => {
            let bytes = copy_corpus_dir(&path, files_dir)?;
            Ok(SourceRecord {
                name,
                mirror,
                sha256: None,
                bytes,
                unpacked: true,
            })
        }
        Fetched::Downloaded {
            path,
            mirror,
            sha256,
        }
        | Fetched::LocalFile {
            path,
            mirror,
            sha256,
        } => {
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            let unpacked = file.should_unpack();
            if unpacked {
                unpack_tar_gz(&path, &name, files_dir)?;
            } else {
                let target = files_dir.join(&name);
                if target.exists() {
                    return Err(DownloadError::Clash {
                        name: name.clone(),
                        path: name,
                    });
                }
                if mirror.starts_with("http://") || mirror.starts_with("https://") {
                    fs::rename(&path, &target).map_err(io_err(&target))?;
                } else {
                    fs::copy(&path, &target).map_err(io_err(&target))?;
                }
            }
            Ok(SourceRecord {
                name,
                mirror,
                sha256: Some(sha256),
                bytes,
                unpacked,
            })
        }
    }
}

/// Copies a local corpus folder's files (only regular files, see [`fsutil::corpus_files`]).
fn copy_corpus_dir(from: &Path, to: &Path) -> Result<u64, DownloadError> {
    let files = fsutil::corpus_files(from, MAX_MIRROR_FILES).map_err(io_err(from))?;
    let mut bytes = 0;
    for relative in files {
        let (source, target) = (from.join(&relative), to.join(&relative));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        bytes += fs::copy(&source, &target).map_err(io_err(&source))?;
    }
    Ok(bytes)
}

/// Fetches files over HTTP(S) or from local paths, trying mirrors in order.
struct Fetcher {
    client: reqwest::blocking::Client,
    retries: u32,
}

impl Fetcher {
    fn new(config: &DownloadConfig) -> Result<Self, StageFailure> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("tinyllm/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Fetcher {
            client,
            retries: config.retries,
        })
    }

    fn fetch(&self, file: &DownloadFile, cx: &StageContext<'_>) -> Result<Fetched, DownloadError> {
        let name = file.file_name();
        let mut failures = Vec::new();
        for mirror in &file.mirrors {
            let attempt = if is_http(mirror) {
                self.fetch_http(mirror, &name, cx)
            } else {
                fetch_local(mirror)
            };
            match attempt.and_then(|fetched| check_sha256(file, fetched)) {
                Ok(fetched) => {
                    // The mirrors that failed are worth a word once another one worked; when
                    // all fail, the error lists them instead.
                    for failure in &failures {
                        tracing::warn!("{name}: {failure}");
                    }
                    return Ok(fetched);
                }
                Err(why) => failures.push(format!("{mirror}: {why}")),
            }
        }
        Err(DownloadError::AllMirrorsFailed { name, failures })
    }

    /// Downloads into the scratch folder, resuming a partial file from the same URL with a range
    /// request, retrying network errors and server errors with backoff.
    fn fetch_http(&self, url: &str, name: &str, cx: &StageContext<'_>) -> Result<Fetched, String> {
        let part = cx.scratch_dir.join(format!("{name}.part"));
        let part_url = cx.scratch_dir.join(format!("{name}.part.url"));
        if fs::read_to_string(&part_url).ok().as_deref() != Some(url) {
            let _ = fs::remove_file(&part);
            fsutil::write_atomic(&part_url, url.as_bytes()).map_err(|e| e.to_string())?;
        }
        let mut last_error = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                let backoff = Duration::from_millis(250 << (attempt - 1).min(6));
                tracing::info!("{name}: retrying in {backoff:?} after: {last_error}");
                std::thread::sleep(backoff);
            }
            match self.http_attempt(url, name, &part, cx) {
                Ok(()) => {
                    let sha256 = sha256_file(&part).map_err(|e| e.to_string())?;
                    return Ok(Fetched::Downloaded {
                        path: part,
                        mirror: url.to_string(),
                        sha256,
                    });
                }
                Err(AttemptError::Permanent(why)) => return Err(why),
                Err(AttemptError::Transient(why)) => last_error = why,
            }
        }
        Err(format!(
            "gave up after {} attempts: {last_error}",
            self.retries + 1
        ))
    }

    fn http_attempt(
        &self,
        url: &str,
        name: &str,
        part: &Path,
        cx: &StageContext<'_>,
    ) -> Result<(), AttemptError> {
        let have = fs::metadata(part).map_or(0, |m| m.len());
        let mut request = self.client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut response = request
            .send()
            .map_err(|e| AttemptError::Transient(error_chain(&e)))?;
        let status = response.status();
        let (start, total) = match status.as_u16() {
            200 => (0, response.content_length()),
            206 => {
                let (first, total) = content_range(&response).ok_or_else(|| {
                    AttemptError::Transient("206 without a usable Content-Range".into())
                })?;
                if first != have {
                    return Err(AttemptError::Transient(format!(
                        "asked for bytes from {have}, got them from {first}"
                    )));
                }
                (have, total)
            }
            416 if have > 0 => {
                let total = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|v| v.parse::<u64>().ok());
                if total == Some(have) {
                    return Ok(());
                }
                let _ = fs::remove_file(part);
                return Err(AttemptError::Transient(
                    "the partial file does not fit the server's; starting over".into(),
                ));
            }
            code if status.is_server_error() || code == 429 || code == 408 => {
                return Err(AttemptError::Transient(format!("HTTP {status}")));
            }
            _ => return Err(AttemptError::Permanent(format!("HTTP {status}"))),
        };
        let mut out = File::options()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .map_err(|e| AttemptError::Permanent(format!("{}: {e}", part.display())))?;
        out.set_len(start)
            .and_then(|_| out.seek(SeekFrom::Start(start)))
            .map_err(|e| AttemptError::Permanent(format!("{}: {e}", part.display())))?;

        let bar = cx.bytes_progress(total, name);
        bar.set_position(start);
        let mut written = start;
        let mut buf = vec![0u8; 256 * 1024];
        let result = loop {
            match response.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = out.write_all(&buf[..n]) {
                        break Err(AttemptError::Permanent(format!("{}: {e}", part.display())));
                    }
                    written += n as u64;
                    bar.set_position(written);
                }
                Err(e) => break Err(AttemptError::Transient(format!("connection broke: {e}"))),
            }
        };
        bar.finish_and_clear();
        out.sync_all()
            .map_err(|e| AttemptError::Permanent(format!("{}: {e}", part.display())))?;
        result?;
        match total {
            Some(total) if written != total => Err(AttemptError::Transient(format!(
                "the connection closed after {written} of {total} bytes"
            ))),
            _ => Ok(()),
        }
    }
}

enum AttemptError {
    /// Worth another attempt at the same mirror (network trouble, server errors).
    Transient(String),
    /// This mirror will not give the file (404, 403, …): move on to the next one.
    Permanent(String),
}

fn is_http(mirror: &str) -> bool {
    is_http_mirror(mirror)
}

/// A local file or folder; anything else (a device, a FIFO, also inside the folder) is refused
/// before it is read. The mirror (the path) is already named with the error, so it is not
/// repeated.
fn fetch_local(mirror: &str) -> Result<Fetched, String> {
    let path = local_mirror_path(mirror)
        .unwrap_or(Path::new(mirror))
        .to_path_buf();
    let meta = fs::metadata(&path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        fsutil::corpus_files(&path, MAX_MIRROR_FILES).map_err(|e| e.to_string())?;
        return Ok(Fetched::LocalDir {
            path,
            mirror: mirror.to_string(),
        });
    }
    if !meta.is_file() {
        return Err(format!(
            "{} is not a file or a folder",
            fsutil::kind_name(&meta.file_type())
        ));
    }
    let sha256 = sha256_file(&path).map_err(|e| e.to_string())?;
    Ok(Fetched::LocalFile {
        path,
        mirror: mirror.to_string(),
        sha256,
    })
}

/// Passes a fetched file whose sha256 is the expected one (or when none is expected); a
/// downloaded file that fails is deleted so that no later attempt resumes from it.
fn check_sha256(file: &DownloadFile, fetched: Fetched) -> Result<Fetched, String> {
    let Some(expected) = &file.sha256 else {
        return Ok(fetched);
    };
    let expected = expected.to_ascii_lowercase();
    let (actual, downloaded) = match &fetched {
        Fetched::Downloaded { sha256, path, .. } => (sha256, Some(path)),
        Fetched::LocalFile { sha256, .. } => (sha256, None),
        Fetched::LocalDir { .. } => {
            return Err("is a folder, which has no sha256; drop `sha256` or give a file".into());
        }
    };
    if *actual == expected {
        return Ok(fetched);
    }
    let why = format!("sha256 mismatch (expected {expected}, got {actual})");
    if let Some(path) = downloaded {
        let _ = fs::remove_file(path);
    }
    Err(why)
}

/// The first byte and the total size from a `Content-Range: bytes a-b/total` header.
fn content_range(response: &reqwest::blocking::Response) -> Option<(u64, Option<u64>)> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = value.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let first = range.split_once('-')?.0.parse().ok()?;
    Some((first, total.parse().ok()))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let line = inner.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = inner.source();
    }
    text
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Unpacks a `.tar.gz` into `dest`, refusing any entry that would land outside it: absolute
/// paths, `..`, and links pointing out. Checks every entry before writing any.
pub fn unpack_tar_gz(archive: &Path, name: &str, dest: &Path) -> Result<u64, DownloadError> {
    let open =
        || -> Result<tar::Archive<ExtensionLimit<flate2::read::GzDecoder<File>>>, DownloadError> {
            let file = File::open(archive).map_err(io_err(archive))?;
            Ok(tar::Archive::new(ExtensionLimit::new(
                flate2::read::GzDecoder::new(file),
            )))
        };
    let bad = |message: String| DownloadError::BadArchive {
        archive: name.to_string(),
        message: fsutil::one_line(&message),
    };
    let unsafe_entry = |entry: &Path, why: &'static str| DownloadError::UnsafeEntry {
        archive: name.to_string(),
        entry: fsutil::one_line(&entry.display().to_string()),
        why,
    };

    let mut checked = open()?;
    for entry in checked.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let relative = contained(&path).ok_or_else(|| unsafe_entry(&path, "leaves the folder"))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| unsafe_entry(&path, "is a link without a target"))?;
            let resolved = if kind.is_symlink() {
                relative.parent().unwrap_or(Path::new("")).join(&target)
            } else {
                target.into_owned()
            };
            if target_is_absolute(&resolved) || contained(&resolved).is_none() {
                return Err(unsafe_entry(&path, "links outside the folder"));
            }
        } else if !(kind.is_file()
            || kind.is_dir()
            || kind.is_gnu_longname()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions())
        {
            return Err(unsafe_entry(
                &path,
                "is neither a file, a folder nor a link",
            ));
        }
    }

    let mut files = 0;
    let mut archive_reader = open()?;
    for entry in archive_reader.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if entry.header().entry_type().is_file() {
            let target = dest.join(contained(&path).unwrap_or_default());
            if target.exists() {
                return Err(DownloadError::Clash {
                    name: name.to_string(),
                    path: fsutil::one_line(&path.display().to_string()),
                });
            }
            files += 1;
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !unpacked {
            return Err(unsafe_entry(&path, "leaves the folder"));
        }
    }
    Ok(files)
}

/// The most bytes a long-name, long-link or pax extension entry may declare: far above any real
/// path or attribute list, and small, because the tar reader reads such an entry whole into memory.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// A tar stream passed through unchanged, except that a long-name, long-link or pax extension
/// entry declaring more than [`MAX_EXTENSION_BYTES`] is an error as soon as its header has been
/// read, before the tar reader allocates for its content (a few compressed bytes can declare and
/// hold gigabytes). It follows the entry layout the way the tar reader does: each header block,
/// then the entry's data rounded up to whole blocks, with a pax `size` record overriding the size
/// of the next entry.
struct ExtensionLimit<R> {
    inner: R,
    header: tar::Header,
    /// Bytes of `header` read so far.
    filled: usize,
    /// Bytes of the current entry (data and padding) still to pass before the next header.
    skip: u64,
    /// The content of a pax extension entry being read, and how many bytes of it are left.
    pax: Option<(Vec<u8>, u64)>,
    /// The size a pax extension sets for the next entry.
    next_size: Option<u64>,
    /// Past the end of the archive, or at a point where the tar reader stops with an error
    /// itself: the rest is not followed.
    stopped: bool,
}

impl<R> ExtensionLimit<R> {
    fn new(inner: R) -> Self {
        ExtensionLimit {
            inner,
            header: tar::Header::new_old(),
            filled: 0,
            skip: 0,
            pax: None,
            next_size: None,
            stopped: false,
        }
    }

    fn follow(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.stopped {
            if self.skip > 0 {
                let take = self.skip.min(data.len() as u64) as usize;
                if let Some((content, left)) = &mut self.pax {
                    let part = take.min(*left as usize);
                    content.extend_from_slice(&data[..part]);
                    *left -= part as u64;
                }
                self.skip -= take as u64;
                data = &data[take..];
                if let Some((content, 0)) = &self.pax {
                    self.next_size = pax_size(content);
                    self.pax = None;
                }
                continue;
            }
            let take = (512 - self.filled).min(data.len());
            self.header.as_mut_bytes()[self.filled..self.filled + take]
                .copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 512 {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> io::Result<()> {
        let bytes = self.header.as_bytes();
        let sum = bytes[..148]
            .iter()
            .chain(&bytes[156..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + 8 * 32;
        let kind = self.header.entry_type();
        let (Ok(declared), Ok(true)) = (
            self.header.entry_size(),
            self.header.cksum().map(|c| c == sum),
        ) else {
            // The end of the archive (zero blocks) or a header the tar reader refuses.
            self.stopped = true;
            return Ok(());
        };
        if kind.is_gnu_sparse() {
            // Refused by the unpacker when the tar reader yields it, before anything after it.
            self.stopped = true;
            return Ok(());
        }
        let recognized = self.header.as_gnu().is_some() || self.header.as_ustar().is_some();
        let read_whole = recognized
            && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let size = if extension {
            declared
        } else {
            self.next_size.take().unwrap_or(declared)
        };
        if !read_whole {
            self.next_size = None;
        }
        if read_whole && size > MAX_EXTENSION_BYTES {
            self.stopped = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a long-name or pax header entry declares {size} bytes; at most \
                     {MAX_EXTENSION_BYTES} are allowed"
                ),
            ));
        }
        if read_whole && kind.is_pax_local_extensions() {
            self.pax = Some((Vec::with_capacity(size as usize), size));
        }
        self.skip = size.div_ceil(512).saturating_mul(512);
        if self.skip == 0
            && let Some((content, _)) = self.pax.take()
        {
            self.next_size = pax_size(&content);
        }
        Ok(())
    }
}

impl<R: Read> Read for ExtensionLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

/// The `size` record of a pax extension, read as the tar reader reads it.
fn pax_size(content: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(content) {
        let extension = extension.ok()?;
        if extension.key() == Ok("size") {
            return extension.value().ok()?.parse().ok();
        }
    }
    None
}

fn target_is_absolute(path: &Path) -> bool {
    path.has_root() || path.is_absolute()
}

/// The path with `.` removed, or `None` if it is absolute or climbs above its start.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_rejects_escapes() {
        assert_eq!(contained(Path::new("a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(contained(Path::new("a/../b")), Some(PathBuf::from("b")));
        assert_eq!(contained(Path::new("../evil")), None);
        assert_eq!(contained(Path::new("a/../../evil")), None);
        assert_eq!(contained(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn sha256_of_known_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
