//! The download stage against a server on 127.0.0.1 that serves the shared TinyStories sample
//! archive: mirrors, resume with range requests, checksums, and safe unpacking.

mod common;

use std::fs;

use common::server::Server;
use common::{Project, error_line, files_under, run_builtin_until, shared_tinystories};
use tinyllm::pipeline::runner::VariantResult;
use tinyllm::pipeline::{RunError, StageId};

const SAMPLE_SHA256: &str = "72714ce42437320c551d891effd0d6ac14252d95be5d693bb0062e328aba67d6";

/// A project whose spec downloads `mirrors` as `TinyStories_sample.tar.gz`.
fn project_with(mirrors: &[String], sha256: &str) -> Project {
    let project = Project::new();
    let mirrors: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    let spec = format!(
        r#"[pipeline]
name = "download-test"

[download]
retries = 2
timeout_secs = 10
files = [{{ name = "TinyStories_sample.tar.gz", sha256 = "{sha256}", mirrors = [{}] }}]
"#,
        mirrors.join(", ")
    );
    fs::write(project.spec_path(), spec).unwrap();
    project
}

fn download(project: &Project) -> Result<Vec<VariantResult>, RunError> {
    run_builtin_until(project, StageId::Download)
}

fn assert_corpus_unpacked(result: &VariantResult) {
    let files = result.run_dir.join("artifacts/download/files");
    for shard in ["data00.json", "data01.json"] {
        let text = fs::read_to_string(files.join(shard)).unwrap();
        let stories: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert!(!stories.is_empty());
        assert!(stories[0]["story"].is_string());
    }
    assert!(!files.join("TinyStories_sample.tar.gz").exists());
}

fn assert_nothing_cached(project: &Project) {
    assert!(files_under(&project.cache().join("download")).is_empty());
    assert!(files_under(&project.cache().join("tmp")).is_empty());
    let all = files_under(&project.cache());
    assert!(
        !all.iter().any(|p| p.ends_with("data00.json")),
        "something was unpacked: {all:?}"
    );
}

#[test]
fn happy_path_downloads_checks_and_unpacks() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let server = Server::start(fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap());
    let project = project_with(
        &[server.url("/ok/TinyStories_sample.tar.gz")],
        SAMPLE_SHA256,
    );
    let results = download(&project).unwrap();
    assert_corpus_unpacked(&results[0]);
    let corpus =
        fs::read_to_string(results[0].run_dir.join("artifacts/download/corpus.json")).unwrap();
    assert!(corpus.contains(SAMPLE_SHA256), "{corpus}");
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn a_mirror_answering_404_falls_through_to_the_next() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let server = Server::start(fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap());
    let project = project_with(
        &[
            server.url("/missing/TinyStories_sample.tar.gz"),
            server.url("/ok/TinyStories_sample.tar.gz"),
        ],
        SAMPLE_SHA256,
    );
    let results = download(&project).unwrap();
    assert_corpus_unpacked(&results[0]);
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/missing/TinyStories_sample.tar.gz",
            "/ok/TinyStories_sample.tar.gz"
        ]
    );
}

#[test]
fn a_connection_cut_half_way_is_resumed_with_a_range_request() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let archive = fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap();
    let half = archive.len() / 2;
    let server = Server::start(archive);
    let project = project_with(
        &[server.url("/cut/TinyStories_sample.tar.gz")],
        SAMPLE_SHA256,
    );
    let results = download(&project).unwrap();
    assert_corpus_unpacked(&results[0]);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn a_wrong_checksum_fails_and_leaves_nothing_behind() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let server = Server::start(fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap());
    let wrong = "0".repeat(64);
    let project = project_with(&[server.url("/ok/TinyStories_sample.tar.gz")], &wrong);
    let err = error_line(&download(&project).unwrap_err());
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(SAMPLE_SHA256), "{err}");
    assert_nothing_cached(&project);
    assert!(
        files_under(&project.cache().join("scratch"))
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".part"))
    );
}

#[test]
fn a_tarball_with_a_parent_dir_entry_is_refused() {
    let evil = evil_tarball();
    let sha = sha256_hex(&evil);
    let server = Server::start(evil);
    let project = project_with(&[server.url("/ok/TinyStories_sample.tar.gz")], &sha);
    let err = error_line(&download(&project).unwrap_err());
    assert!(err.contains("refusing to unpack"), "{err}");
    assert!(err.contains("../evil"), "{err}");
    assert!(!project.path("evil").exists());
    assert!(!project.cache().join("evil").exists());
    assert!(!project.cache().join("tmp/evil").exists());
    assert_nothing_cached(&project);
}

#[test]
fn a_tarball_with_a_link_leaving_the_folder_is_refused() {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "data/link", "../../outside")
        .unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let sha = sha256_hex(&archive);
    let server = Server::start(archive);
    let project = project_with(&[server.url("/ok/x.tar.gz")], &sha);
    let err = error_line(&download(&project).unwrap_err());
    assert!(err.contains("links outside the folder"), "{err}");
    assert_nothing_cached(&project);
}

#[test]
fn local_files_and_folders_are_sources_too() {
    let project = Project::new();
    let folder = project.path("corpus");
    fs::create_dir_all(folder.join("nested")).unwrap();
    fs::write(folder.join("a.txt"), "one\n").unwrap();
    fs::write(folder.join("nested/b.txt"), "two\n").unwrap();
    let spec = format!(
        "[pipeline]\nname = \"local\"\n[download]\nfiles = [{{ mirrors = [\"{}\"] }}, {{ name = \"c.txt\", mirrors = [\"file://{}\"] }}]\n",
        folder.display(),
        project.path("stories.txt").display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    let results = download(&project).unwrap();
    let files = results[0].run_dir.join("artifacts/download/files");
    assert_eq!(fs::read_to_string(files.join("a.txt")).unwrap(), "one\n");
    assert_eq!(
        fs::read_to_string(files.join("nested/b.txt")).unwrap(),
        "two\n"
    );
    assert!(files.join("c.txt").exists());
}

/// A gzipped tarball whose one entry is named `../evil` (written byte by byte: the tar crate
/// refuses to build such a path).
fn evil_tarball() -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let name = b"../evil";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    let body = b"pwned\n";
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    builder.append(&header, &body[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
