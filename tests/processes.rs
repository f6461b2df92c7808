//! Whole `tinyllm` processes against the cache: one killed with SIGKILL in the middle of a stage,
//! and two started together on the same spec.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::server::Server;
use common::{Project, files_under, shared_tinystories};

const SAMPLE_SHA256: &str = "72714ce42437320c551d891effd0d6ac14252d95be5d693bb0062e328aba67d6";

fn project_downloading(url: &str) -> Project {
    let project = Project::new();
    let spec = format!(
        "[pipeline]\nname = \"proc\"\n[download]\nfiles = [{{ name = \"sample.tar.gz\", sha256 = \"{SAMPLE_SHA256}\", mirrors = [\"{url}\"] }}]\n"
    );
    fs::write(project.spec_path(), spec).unwrap();
    project
}

fn tinyllm(project: &Project) -> Command {
    let mut command = project.download_command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

#[test]
fn sigkill_mid_stage_leaves_no_finished_artifact_and_the_next_run_resumes() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let archive = fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap();
    let half = archive.len() / 2;
    let server = Server::start(archive);
    let project = project_downloading(&server.url("/stall/sample.tar.gz"));

    let mut child = tinyllm(&project).spawn().unwrap();
    server.wait_for_bytes(half, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    assert!(
        files_under(&project.cache().join("download")).is_empty(),
        "a killed run left an artifact"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .arg("status")
        .arg(project.spec_path())
        .arg("--cache")
        .arg(project.cache())
        .output()
        .unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(status.contains("not built"), "{status}");

    let output = tinyllm(&project).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("download     ran"), "{stdout}");
    // The partial file survived the crash in the scratch folder, so the transfer resumed.
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].range.is_some(), "{seen:?}");
    // The killed run's temporary folder is gone, and the artifact is whole.
    assert!(files_under(&project.cache().join("tmp")).is_empty());
    let data = project
        .runs()
        .join("proc/default/artifacts/download/files/data00.json");
    let stories: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(data).unwrap()).unwrap();
    assert!(!stories.is_empty());
}

#[test]
fn two_processes_on_the_same_spec_both_succeed_and_the_stage_runs_once() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let server = Server::start(fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap());
    let project = project_downloading(&server.url("/slow/sample.tar.gz"));

    let first = tinyllm(&project).spawn().unwrap();
    let second = tinyllm(&project).spawn().unwrap();
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    for output in &outputs {
        assert!(output.status.success(), "{output:?}");
    }
    let stdouts: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .collect();
    let ran = stdouts
        .iter()
        .filter(|s| s.contains("download     ran"))
        .count();
    assert_eq!(ran, 1, "{stdouts:?}");
    assert_eq!(
        server.seen().len(),
        1,
        "the file was fetched more than once"
    );
    assert_eq!(
        fs::read_dir(project.cache().join("download"))
            .unwrap()
            .count(),
        1
    );
}
