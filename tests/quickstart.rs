//! The newcomer's path, end to end (`.ci/run` runs it in release mode): the quickstart pipeline
//! from an empty cache, its artifacts, metrics and stories, a second run that re-runs nothing,
//! then every command in the `sh` blocks of `README.md` and `README.zh-CN.md`, in the same
//! project, so that neither README can drift from the code.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const READMES: [&str; 2] = ["README.md", "README.zh-CN.md"];

/// Commands a README shows that CI itself runs (`.ci/run` builds, tests and lints).
const RUN_BY_CI: [&str; 4] = [
    "cargo build --release",
    "cargo test",
    "bash .ci/run",
    "cargo test --release -- --ignored",
];

/// A copy of the repository's pipelines, overlays and embedded corpus in a temporary folder,
/// with `../shared` beside it when the real one exists (some commands read the excerpts).
struct Checkout {
    _root: tempfile::TempDir,
    dir: PathBuf,
}

impl Checkout {
    fn new() -> Checkout {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tinyllm");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for folder in ["pipelines", "configs", "data"] {
            copy_dir(&repo.join(folder), &dir.join(folder));
        }
        if let Some(shared) = common::shared_tinystories() {
            let shared = shared.parent().unwrap().parent().unwrap();
            std::os::unix::fs::symlink(shared, root.path().join("shared")).unwrap();
        }
        Checkout { _root: root, dir }
    }

    /// Runs `tinyllm args` in the checkout, feeding `stdin`; fails the test unless it succeeds.
    fn tinyllm(&self, args: &[String], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
            .current_dir(&self.dir)
            .args(args)
            .env_remove("TINYLLM_CACHE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "tinyllm {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
#[ignore = "end-to-end: run by .ci/run in release mode"]
fn quickstart_tells_stories_then_every_readme_command_runs() {
    let checkout = Checkout::new();
    let quickstart = strings(&["run", "pipelines/quickstart.toml"]);

    let first = checkout.tinyllm(&quickstart, "");
    let printed = String::from_utf8_lossy(&first.stdout);
    for stage in ["download", "train_vocab", "pretokenize", "train", "sample"] {
        assert!(
            printed.contains(&format!("{stage:<12} ran")),
            "{stage} did not run:\n{printed}"
        );
    }
    check_quickstart_run(&checkout.dir.join("runs/quickstart/default"));

    let again = checkout.tinyllm(&quickstart, "");
    let printed = String::from_utf8_lossy(&again.stdout);
    assert_eq!(printed.matches(" cached ").count(), 5, "{printed}");
    assert!(!printed.contains(" ran "), "{printed}");

    let mut done = BTreeSet::from([quickstart.join(" ")]);
    for readme in READMES {
        let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(readme)).unwrap();
        let commands = shell_commands(&text);
        assert!(!commands.is_empty(), "{readme} shows no commands");
        for command in commands {
            if RUN_BY_CI.contains(&command.as_str()) {
                continue;
            }
            // `tinyllm schema > pipelines/schema.json`: the one redirection the READMEs use.
            let (command, redirect) = match command.split_once(" > ") {
                Some((command, file)) => (command.to_string(), Some(file.trim().to_string())),
                None => (command, None),
            };
            // `tinyllm serve … &`: a server left running while the reader tries it.
            if let Some(server) = command.strip_suffix(" &") {
                let args = tinyllm_args(server)
                    .unwrap_or_else(|| panic!("{readme}: cannot exercise `{command}`"));
                if done.insert(args.join(" ")) {
                    exercise_server(&checkout, &args);
                }
                continue;
            }
            let args = tinyllm_args(&command)
                .unwrap_or_else(|| panic!("{readme}: cannot exercise `{command}`"));
            // Both READMEs show many of the same commands; an export would refuse its own
            // folder the second time.
            if !done.insert(args.join(" ")) {
                continue;
            }
            let output = exercise(&checkout, &args);
            if let Some(file) = redirect {
                fs::write(checkout.dir.join(file), &output.stdout).unwrap();
            }
        }
    }
}

/// Starts the README's `tinyllm serve` (on a free port rather than the one shown, which may be
/// taken), asks it for a completion, and stops it.
fn exercise_server(checkout: &Checkout, args: &[String]) {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let mut args = args.to_vec();
    if let Some(port) = args.iter().position(|a| a == "--port") {
        args[port + 1] = "0".into();
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .current_dir(&checkout.dir)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let answer = line.trim().strip_prefix("listening on ").map(|url| {
        reqwest::blocking::Client::new()
            .post(format!("{url}/v1/completions"))
            .header("content-type", "application/json")
            .body(r#"{"prompt": "Once upon a time", "max_tokens": 20, "seed": 1}"#)
            .send()
            .and_then(|response| response.error_for_status())
            .and_then(|response| response.text())
    });
    let _ = server.kill();
    let _ = server.wait();
    let answer = answer
        .unwrap_or_else(|| panic!("tinyllm {args:?} printed {line:?}, not where it listens"))
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["object"], "text_completion", "{answer}");
}

/// The quickstart's run folder holds its artifacts, a training log whose loss went down, and
/// stories made of English words.
fn check_quickstart_run(run: &Path) {
    for file in [
        "samples.md",
        "metrics.jsonl",
        "report.md",
        "spec.toml",
        "stages.json",
        "artifacts/train/model.safetensors",
        "artifacts/train/tokenizer.json",
        "artifacts/train/loss.png",
        "artifacts/train/training.json",
        "artifacts/sample/samples.json",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing");
    }
    let records: Vec<serde_json::Value> = fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let losses: Vec<f64> = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < first * 0.6, "the loss went from {first} to {last}");
    let training: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(run.join("artifacts/train/training.json")).unwrap(),
    )
    .unwrap();
    // The model learns 180 stories by heart, so validation is best early; it must have learnt
    // something general first.
    let best = training["best"]["val_bpb"].as_f64().unwrap();
    assert!(best < 2.5, "best validation {best} bits/byte");

    let samples: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(run.join("artifacts/sample/samples.json")).unwrap(),
    )
    .unwrap();
    for sample in samples["samples"].as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(words.len() >= 10, "a short story: {text:?}");
        let common = words
            .iter()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_ascii_alphabetic())
                    .to_lowercase()
            })
            .filter(|w| COMMON_WORDS.contains(&w.as_str()))
            .count();
        assert!(
            common * 4 >= words.len(),
            "fewer than a quarter of the words are common English words: {text:?}"
        );
    }
}

const COMMON_WORDS: [&str; 40] = [
    "a", "and", "the", "to", "was", "he", "she", "it", "they", "his", "her", "said", "in", "of",
    "with", "you", "i", "is", "on", "so", "day", "up", "had", "that", "for", "at", "happy", "big",
    "little", "we", "one", "very", "were", "are", "saw", "can", "not", "go", "mom", "friend",
];

/// Every command in the `sh` code blocks of a Markdown text: comments dropped, lines ending in
/// `\` joined.
fn shell_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block && trimmed == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let code = strip_comment(trimmed).trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(code);
        let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        if !command.is_empty() {
            commands.push(command);
        }
        pending.clear();
    }
    commands
}

/// A line without its `#` comment (a `#` outside quotes that starts a word).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..at],
            _ => {}
        }
        previous = c;
    }
    line
}

/// The arguments of `tinyllm …` or `cargo run --release -- …`, shell quotes removed; `None`
/// for anything else.
fn tinyllm_args(command: &str) -> Option<Vec<String>> {
    let words = shell_words(command)?;
    let rest = match words.first()?.as_str() {
        "tinyllm" => &words[1..],
        "cargo" if words.get(1..4)? == ["run", "--release", "--"] => &words[4..],
        _ => return None,
    };
    Some(rest.to_vec())
}

/// Splits a command into words the way a POSIX shell does for simple commands: single quotes
/// keep everything, double quotes keep spaces. `None` for pipes, redirections and variables,
/// which this checker does not run.
fn shell_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (Some(q), _) if c == q => quote = None,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, '|' | '>' | '<' | '$' | ';' | '&') => return None,
            (_, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

/// Runs one README command. A pipeline other than the quickstart would download 1.5 GB or
/// train for hours, so it runs with `--dry-run`: its spec, overlays, `--set`s and sweeps are
/// resolved and keyed, and nothing is built. `--interactive` gets one prompt on stdin.
fn exercise(checkout: &Checkout, args: &[String]) -> Output {
    let mut args = args.to_vec();
    let heavy_pipeline = matches!(args.first().map(String::as_str), Some("run" | "status"))
        && args
            .get(1)
            .is_some_and(|spec| spec != "pipelines/quickstart.toml");
    if heavy_pipeline && args[0] == "run" {
        args.push("--dry-run".into());
    }
    let stdin = if args.iter().any(|a| a == "--interactive") {
        "Once upon a time\n"
    } else {
        ""
    };
    let output = checkout.tinyllm(&args, stdin);
    assert!(
        !output.stdout.is_empty() || !output.stderr.is_empty(),
        "tinyllm {args:?} printed nothing"
    );
    output
}

#[test]
fn readme_commands_are_found_and_split_like_a_shell() {
    let markdown = "text\n```sh\ncargo run --release -- run pipelines/quickstart.toml   # go\n\
        tinyllm sample --checkpoint runs/q/default \\\n  --prompt \"Once upon a time\"\n\
        tinyllm run p.toml --set 'sample.prompts=[\"A # b\"]'\n```\n```text\nnot a command\n```\n";
    let commands = shell_commands(markdown);
    assert_eq!(
        commands,
        [
            "cargo run --release -- run pipelines/quickstart.toml",
            "tinyllm sample --checkpoint runs/q/default --prompt \"Once upon a time\"",
            "tinyllm run p.toml --set 'sample.prompts=[\"A # b\"]'",
        ]
    );
    assert_eq!(
        tinyllm_args(&commands[1]).unwrap(),
        [
            "sample",
            "--checkpoint",
            "runs/q/default",
            "--prompt",
            "Once upon a time"
        ]
    );
    assert_eq!(
        tinyllm_args(&commands[2]).unwrap(),
        ["run", "p.toml", "--set", "sample.prompts=[\"A # b\"]"]
    );
    assert_eq!(tinyllm_args("python3 hf_check.py"), None);
    assert_eq!(tinyllm_args("tinyllm cache ls | head"), None);
}
