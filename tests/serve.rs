//! `tinyllm serve`: the completions it returns, whole or streamed, are what `tinyllm sample`
//! prints for the same seed and settings; stop strings cut them; every bad request gets an
//! OpenAI-style JSON error and the server goes on serving; a client that leaves frees its slot
//! (streamed, whether its completion is running or queued); a full queue refuses with 429.
//!
//! The model is trained once per run of this file: the 64-wide test model, 300 steps (enough to
//! end some stories), with a 4096-token context, so that a completion asked to ignore the end of
//! its story runs long enough (about a second) for a client to leave in the middle of it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

const MODEL: &str = "test-model";
const CONTEXT: usize = 4096;

/// The trained model's folder (config.json, model.safetensors, tokenizer.json), under the
/// target's temporary folder so that every test of this file uses the one training.
fn checkpoint() -> &'static Path {
    static CHECKPOINT: OnceLock<PathBuf> = OnceLock::new();
    CHECKPOINT.get_or_init(|| {
        let project = common::training_project("lr = 3e-3\nmax_iters = 300\neval_interval = 300\n");
        let spec = std::fs::read_to_string(project.spec_path()).unwrap();
        let spec = spec.replace("max_seq_len = 32", &format!("max_seq_len = {CONTEXT}"));
        std::fs::write(project.spec_path(), spec).unwrap();
        let output = project.run_command(&[]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let trained = project.runs().join("test/default/artifacts/train");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-model");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(trained.join(name), dir.join(name)).unwrap();
        }
        dir
    })
}

/// A running `tinyllm serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
            .arg("serve")
            .arg("--checkpoint")
            .arg(checkpoint())
            .args(["--port", "0", "--model-name", MODEL])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.wait();
                panic!("no listening line: {line:?}; {}", stderr.lock().unwrap())
            })
            .to_string();
        Server { child, url, stderr }
    }

    fn post(&self, body: &Value) -> Response {
        Client::new()
            .post(format!("{}/v1/completions", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// A non-streamed completion that must succeed.
    fn complete(&self, body: &Value) -> Value {
        let response = self.post(body);
        assert_eq!(response.status(), 200, "{}", self.log());
        json_of(response)
    }

    fn health(&self) -> Value {
        json_of(reqwest::blocking::get(format!("{}/health", self.url)).unwrap())
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(response: Response) -> Value {
    let text = response.text().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// What `tinyllm sample` prints after the prompt, and how it says it stopped, as a
/// finish_reason.
fn sample(
    prompt: &str,
    seed: u64,
    temperature: f64,
    top_p: f64,
    top_k: usize,
    max: usize,
) -> (String, String) {
    let mut args = vec!["sample".to_string()];
    if !prompt.is_empty() {
        args.extend(["--prompt".to_string(), prompt.to_string()]);
    }
    for (flag, value) in [
        ("--seed", seed.to_string()),
        ("--temperature", temperature.to_string()),
        ("--top-p", top_p.to_string()),
        ("--top-k", top_k.to_string()),
        ("--max-new-tokens", max.to_string()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = common::tinyllm(&args, Some(checkpoint()));
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let text = stdout
        .strip_prefix(prompt)
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap()
        .to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = if stderr.contains("stopped at end of story") {
        "stop"
    } else {
        assert!(
            stderr.contains("stopped at max_new_tokens")
                || stderr.contains("stopped at context full"),
            "{stderr}"
        );
        "length"
    };
    (text, reason.to_string())
}

/// Reads a stream of server-sent events to its end, checks that it is well formed (JSON
/// chunks, finish_reason only on the last, then `[DONE]`), and returns the text and the
/// finish_reason.
fn read_stream(response: Response) -> (String, String) {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let body = response.text().unwrap();
    let events: Vec<&str> = body.split_terminator("\n\n").collect();
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(*done, "data: [DONE]", "{body}");
    let (last, pieces) = chunks.split_last().expect("a last chunk");
    let mut text = String::new();
    for event in pieces {
        let chunk: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["object"], "text_completion", "{chunk}");
        assert_eq!(chunk["model"], MODEL);
        assert!(chunk["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null, "{body}");
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap());
    }
    let last: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    text.push_str(last["choices"][0]["text"].as_str().unwrap());
    let reason = last["choices"][0]["finish_reason"].as_str().unwrap();
    (text, reason.to_string())
}

fn request(
    prompt: &str,
    seed: u64,
    temperature: f64,
    top_p: f64,
    top_k: usize,
    max: usize,
) -> Value {
    json!({
        "model": MODEL, "prompt": prompt, "seed": seed, "temperature": temperature,
        "top_p": top_p, "top_k": top_k, "max_tokens": max,
    })
}

#[test]
fn completions_whole_and_streamed_are_what_sample_prints() {
    let server = Server::start(&[]);
    let settings = [
        ("Tom had a", 7, 0.8, 0.9, 0, 200),
        ("Lily", 3, 1.0, 1.0, 5, 12),
        ("", 11, 0.0, 1.0, 0, 200),
    ];
    for (prompt, seed, temperature, top_p, top_k, max) in settings {
        let expected = sample(prompt, seed, temperature, top_p, top_k, max);
        let body = request(prompt, seed, temperature, top_p, top_k, max);
        let whole = server.complete(&body);
        let choice = &whole["choices"][0];
        assert_eq!(
            (
                choice["text"].as_str().unwrap(),
                choice["finish_reason"].as_str().unwrap()
            ),
            (expected.0.as_str(), expected.1.as_str()),
            "{prompt:?} seed {seed}"
        );
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(choice["logprobs"], Value::Null);
        let usage = &whole["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        assert_eq!(
            read_stream(server.post(&streamed)),
            expected,
            "{prompt:?} seed {seed} streamed"
        );
    }
}

#[test]
fn a_stop_string_cuts_the_completion_streamed_or_not() {
    let server = Server::start(&[]);
    let body = request("Tom had a", 5, 1.0, 1.0, 0, 60);
    let full = server.complete(&body)["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(full.len() > 12, "{full:?}");
    let middle = full.len() / 2;
    let stop = &full[middle..middle + 3];
    let expected = full[..full.find(stop).unwrap()].to_string();
    for stream in [false, true] {
        let mut stopped = body.clone();
        stopped["stop"] = json!(["never in a story", stop]);
        stopped["stream"] = json!(stream);
        let got = if stream {
            read_stream(server.post(&stopped))
        } else {
            let whole = server.complete(&stopped);
            let choice = &whole["choices"][0];
            (
                choice["text"].as_str().unwrap().to_string(),
                choice["finish_reason"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(
            got,
            (expected.clone(), "stop".to_string()),
            "stop {stop:?}, stream {stream}"
        );
    }
    let mut unmatched = body.clone();
    unmatched["stop"] = json!("never in a story");
    unmatched["stream"] = json!(true);
    assert_eq!(read_stream(server.post(&unmatched)).0, full);
}

/// Sends a request and checks its error: the status and OpenAI's error shape.
fn expect_error(
    response: Response,
    status: u16,
    param: Option<&str>,
    code: Option<&str>,
) -> String {
    assert_eq!(response.status(), status);
    let body = json_of(response);
    let error = &body["error"];
    assert_eq!(error["param"].as_str(), param, "{body}");
    assert_eq!(error["code"].as_str(), code, "{body}");
    assert!(error["type"].is_string(), "{body}");
    let message = error["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    message
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_goes_on() {
    let server = Server::start(&["--max-tokens-limit", "500"]);
    let client = Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    let completions = url("/v1/completions");
    let good = request("Tom", 1, 1.0, 1.0, 0, 5);
    let raw = |body: Vec<u8>| {
        client
            .post(&completions)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        server.post(&body)
    };

    let message = expect_error(with("max_tokens", json!(-1)), 400, Some("max_tokens"), None);
    assert!(message.contains("-1"), "{message}");
    expect_error(
        with("max_tokens", json!(501)),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        with("max_tokens", json!("5")),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        with("temperature", json!(3)),
        400,
        Some("temperature"),
        None,
    );
    expect_error(with("top_p", json!(0)), 400, Some("top_p"), None);
    expect_error(with("prompt", json!(["a", "b"])), 400, Some("prompt"), None);
    expect_error(with("n", json!(2)), 400, Some("n"), None);
    expect_error(with("logprobs", json!(1)), 400, Some("logprobs"), None);
    let message = expect_error(
        with("model", json!("gpt-4")),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    assert!(
        message.contains("gpt-4") && message.contains(MODEL),
        "{message}"
    );
    let long = "Tom had a ball. ".repeat(CONTEXT);
    expect_error(
        with("prompt", json!(long)),
        400,
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    expect_error(raw(b"{\"prompt\": ".to_vec()), 400, None, None);
    expect_error(raw(b"[1, 2]".to_vec()), 400, None, None);
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(10 << 20));
    expect_error(raw(huge.into_bytes()), 413, None, Some("request_too_large"));
    expect_error(
        client.get(url("/v1/nowhere")).send().unwrap(),
        404,
        None,
        Some("unknown_url"),
    );
    expect_error(
        client.get(&completions).send().unwrap(),
        405,
        None,
        Some("method_not_allowed"),
    );

    // Still serving, with unknown fields ignored and `model` optional.
    let mut lenient = good.clone();
    lenient.as_object_mut().unwrap().remove("model");
    lenient["user"] = json!("someone");
    lenient["presence_penalty"] = json!(0);
    let whole = server.complete(&lenient);
    assert_eq!(whole["model"], MODEL);
    let models = json_of(client.get(url("/v1/models")).send().unwrap());
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    let health = server.health();
    assert_eq!(health["status"], "ok");
    let page = client.get(url("/")).send().unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().unwrap().contains("tinyllm playground"));

    // A second server on the same port is one line of error, not a panic.
    let port = server.url.rsplit(':').next().unwrap();
    let output = common::tinyllm(&["serve", "--port", port], Some(checkpoint()));
    let line = common::one_error_line(&output);
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
}

#[test]
fn bad_flags_are_one_line_errors() {
    let dir = Path::new("no/such/run");
    for (args, expected) in [
        (
            &["serve", "--parallel", "0"][..],
            "--parallel 0 must be between 1",
        ),
        (
            &["serve", "--queue", "1000000"],
            "--queue 1000000 is more than",
        ),
        (
            &["serve", "--max-tokens-limit", "0"],
            "--max-tokens-limit 0 must be",
        ),
        (&["serve", "--body-limit", "10"], "--body-limit 10 must be"),
        (&["serve"], "not a model folder"),
    ] {
        let line = common::one_error_line(&common::tinyllm(args, Some(dir)));
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

/// Reads a stream's events up to its first chunk of text.
fn first_chunk(response: Response) -> BufReader<Response> {
    assert_eq!(response.status(), 200);
    let mut reader = BufReader::new(response);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: {"), "{line:?}");
    reader
}

/// A streamed completion as long as the context allows: far longer than the steps of the tests
/// below take.
fn long_stream() -> Value {
    json!({
        "prompt": "Tom", "max_tokens": CONTEXT, "ignore_eos": true, "stream": true, "seed": 1,
    })
}

#[test]
fn a_full_queue_refuses_with_429() {
    let server = Server::start(&["--parallel", "1", "--queue", "1"]);
    let _running = first_chunk(server.post(&long_stream()));
    // Its headers came back, so it is queued behind the one running.
    let queued = server.post(&long_stream());
    assert_eq!(queued.status(), 200);
    let health = server.health();
    assert_eq!(
        (health["busy"].as_u64(), health["queued"].as_u64()),
        (Some(1), Some(1)),
        "{health}"
    );
    let refused = server.post(&request("Tom", 1, 1.0, 1.0, 0, 5));
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_error(refused, 429, None, Some("queue_full"));
}

#[test]
fn a_client_that_leaves_frees_its_slot() {
    let server = Server::start(&["--parallel", "1"]);
    let running = first_chunk(server.post(&long_stream()));
    let queued = server.post(&long_stream());
    assert_eq!(queued.status(), 200);
    drop(queued);
    drop(running);
    // Queued behind both: it completes once the worker has given them up.
    let whole = server.complete(&request("Tom", 1, 1.0, 1.0, 0, 5));
    assert!(whole["choices"][0]["text"].is_string());
    let health = server.health();
    assert_eq!(
        (health["cancelled"].as_u64(), health["completed"].as_u64()),
        (Some(2), Some(1)),
        "{health}\n{}",
        server.log()
    );
}

/// The Python that `var` names, for a check in `tests/interop/`; `None` (the test skips) when it
/// is unset, unless `TINYLLM_REQUIRE_{require}=1` makes that a failure (as `.ci/run` does).
fn interop_python(var: &str, require: &str, needs: &str) -> Option<std::ffi::OsString> {
    let python = std::env::var_os(var);
    if python.is_none() {
        let required = format!("TINYLLM_REQUIRE_{require}");
        assert!(
            std::env::var_os(&required).is_none_or(|v| v != "1"),
            "{required}=1 and {var} is not set"
        );
        eprintln!("skipped: set {var} to a Python with {needs}");
    }
    python
}

/// Runs `tests/interop/SCRIPT` with `python` against `server` and the `args`; returns what it
/// printed, failing the test (with the server's log) unless it succeeded.
fn run_interop(
    python: std::ffi::OsString,
    script: &str,
    server: &Server,
    args: &[&Path],
) -> String {
    let output = Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/interop")
                .join(script),
        )
        .arg(&server.url)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    print!("{stdout}");
    stdout
}

#[test]
#[ignore = "needs a Python with the openai package in TINYLLM_OPENAI_PYTHON; .ci/run sets it"]
fn the_openai_python_client_gets_what_sample_prints() {
    let Some(python) = interop_python("TINYLLM_OPENAI_PYTHON", "OPENAI", "the openai package")
    else {
        return;
    };
    let server = Server::start(&[]);
    let tinyllm = Path::new(env!("CARGO_BIN_EXE_tinyllm"));
    let stdout = run_interop(python, "openai_check.py", &server, &[tinyllm, checkpoint()]);
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
#[ignore = "needs Chromium and a Python with Playwright in TINYLLM_BROWSER_PYTHON; .ci/run sets it"]
fn the_playground_streams_a_story_in_a_real_browser() {
    let Some(python) = interop_python(
        "TINYLLM_BROWSER_PYTHON",
        "BROWSER",
        "the playwright package",
    ) else {
        return;
    };
    let server = Server::start(&[]);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground.png");
    let _ = std::fs::remove_file(&screenshot);
    run_interop(python, "playground_check.py", &server, &[&screenshot]);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a screenshot ({} bytes)",
        screenshot.display(),
        png.len()
    );
}
