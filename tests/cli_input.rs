//! `score` and `tokenize` read their text from the command line, from `--file PATH` or from
//! standard input (`--file -`): the same text gives the same result whichever way it comes, a
//! text longer than the model's context is scored in windows, and a missing, doubled, endless or
//! non-UTF-8 input is one line.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Project, one_error_line, tinyllm};

/// Runs `tinyllm ARGS` with `stdin` as its standard input.
fn tinyllm_with_stdin(args: &[&str], checkpoint: Option<&Path>, stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    command.args(args);
    if let Some(dir) = checkpoint {
        command.arg("--checkpoint").arg(dir);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn tokenize_gives_the_same_ids_for_an_argument_a_file_and_standard_input() {
    let project = common::training_project("");
    let output = project
        .run_command(&["--until", "train_vocab"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let tokenizer = project.runs().join("test/default/artifacts/train_vocab");
    let tokenizer = tokenizer.to_str().unwrap();
    let text = "Tom had a red ball.\nLily liked the cake. The dog was happy!";
    let file = project.path("text.txt");
    fs::write(&file, text).unwrap();

    let base = ["tokenize", "--tokenizer", tokenizer];
    let from_argument = stdout_of(&tinyllm(&[&base[..], &[text]].concat(), None));
    let from_file = stdout_of(&tinyllm(
        &[&base[..], &["--file", file.to_str().unwrap()]].concat(),
        None,
    ));
    let from_stdin = stdout_of(&tinyllm_with_stdin(
        &[&base[..], &["--file", "-"]].concat(),
        None,
        text.as_bytes(),
    ));
    let ids = from_argument.lines().next().unwrap();
    assert!(ids.split(' ').count() > 10, "{from_argument}");
    assert!(
        from_argument.contains(&format!("{} bytes", text.len())),
        "{from_argument}"
    );
    assert_eq!(from_file, from_argument);
    assert_eq!(from_stdin, from_argument);
}

#[test]
fn score_reads_a_file_longer_than_the_context_and_scores_every_token() {
    let project = common::trained_project();
    let run_dir = project.runs().join("test/default");
    // Far more tokens than the test model's 32 positions.
    let text = common::synthetic_stories(20);
    let file = project.path("validation.txt");
    fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();

    let summary = stdout_of(&tinyllm(&["score", "--file", file], Some(&run_dir)));
    assert!(
        summary.contains(" nats/token (perplexity ") && summary.contains(" bits/byte"),
        "{summary}"
    );

    let json_of = |output: &Output| -> serde_json::Value {
        serde_json::from_str(&stdout_of(output)).unwrap()
    };
    let from_file = json_of(&tinyllm(
        &["score", "--file", file, "--json"],
        Some(&run_dir),
    ));
    let ids = from_file["ids"].as_array().unwrap();
    assert!(ids.len() > 4 * 32, "{} tokens", ids.len());
    assert_eq!(ids[0], 1, "BOS first");
    let losses = from_file["losses"].as_array().unwrap();
    assert_eq!(losses.len(), ids.len() - 1);
    assert_eq!(from_file["logits"].as_array().unwrap().len(), ids.len());
    let loss = from_file["loss"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 300f64.ln() + 1.0, "{loss}");
    assert!(
        summary.starts_with(&format!("{} tokens: {loss:.4} nats/token", losses.len())),
        "{summary}"
    );

    let from_argument = json_of(&tinyllm(
        &["score", "--text", &text, "--json"],
        Some(&run_dir),
    ));
    let from_stdin = json_of(&tinyllm_with_stdin(
        &["score", "--file", "-", "--json"],
        Some(&run_dir),
        text.as_bytes(),
    ));
    assert_eq!(from_argument, from_file);
    assert_eq!(from_stdin, from_file);

    let empty = project.path("empty.txt");
    fs::write(&empty, "").unwrap();
    let line = one_error_line(&tinyllm(
        &["score", "--file", empty.to_str().unwrap()],
        Some(&run_dir),
    ));
    assert!(
        line.contains(&format!(
            "--file {} has nothing to score (it is empty or blank)",
            empty.display()
        )),
        "{line}"
    );

    // With --json every position's logits are held and printed: a long text is refused before
    // the model runs, with the figure, instead of exhausting memory.
    let long = project.path("long.txt");
    fs::write(&long, "Tom ran. ".repeat(400_000)).unwrap();
    let line = one_error_line(&tinyllm(
        &["score", "--file", long.to_str().unwrap(), "--json"],
        Some(&run_dir),
    ));
    assert!(
        line.contains("--json prints the logits of every position")
            && line.contains("at most 1.1 GB"),
        "{line}"
    );
}

#[test]
fn exactly_one_of_the_text_and_file_is_required_in_one_line() {
    let project = Project::new();
    let file = project.path("stories.txt");
    let file = file.to_str().unwrap();
    let nowhere = project.path("nowhere");
    let tokenize = ["tokenize", "--tokenizer", "tokenizer.json"];

    let both = [
        one_error_line(&tinyllm(
            &["score", "--text", "Tom", "--file", file],
            Some(&nowhere),
        )),
        one_error_line(&tinyllm(
            &[&tokenize[..], &["Tom", "--file", file]].concat(),
            None,
        )),
    ];
    assert_eq!(both[0], "error: give --text or --file, not both");
    assert_eq!(both[1], "error: give TEXT or --file, not both");

    let neither = [
        one_error_line(&tinyllm(&["score"], Some(&nowhere))),
        one_error_line(&tinyllm(&tokenize, None)),
    ];
    for (line, name) in neither.iter().zip(["--text", "TEXT"]) {
        assert_eq!(
            line,
            &format!(
                "error: give {name}, or --file PATH to read it from a file (- for standard input)"
            )
        );
    }

    let line = one_error_line(&tinyllm(
        &["score", "--file", "no/such.txt"],
        Some(&nowhere),
    ));
    assert!(
        line.starts_with("error: cannot read no/such.txt: "),
        "{line}"
    );
}

#[test]
fn an_endless_or_oversized_input_is_refused_at_the_limit_in_one_line() {
    let project = Project::new();
    let nowhere = project.path("nowhere");
    let limit = "more than 256.0 MB, the most tinyllm reads as one text";

    let line = one_error_line(&tinyllm(&["score", "--file", "/dev/zero"], Some(&nowhere)));
    assert!(
        line.contains(&format!("--file /dev/zero holds {limit}")),
        "{line}"
    );

    // Standard input that never ends.
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .args(["tokenize", "--tokenizer", "tokenizer.json", "--file", "-"])
        .stdin(fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    let line = one_error_line(&output);
    assert!(
        line.contains(&format!("standard input holds {limit}")),
        "{line}"
    );

    let binary = project.path("binary.txt");
    fs::write(&binary, b"Tom had a \xff\xfe cat.").unwrap();
    let line = one_error_line(&tinyllm(
        &["score", "--file", binary.to_str().unwrap()],
        Some(&nowhere),
    ));
    assert!(
        line.ends_with("binary.txt is not UTF-8 text (invalid byte at offset 10)"),
        "{line}"
    );
}
