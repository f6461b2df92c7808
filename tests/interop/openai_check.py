"""Checks `tinyllm serve` with OpenAI's own Python client: a completion and a streamed one are
the text `tinyllm sample` prints for the same seed and settings, the streamed one's last chunks
carry the finish reason and the token counts, and bad requests raise the client's exceptions
(BadRequestError, NotFoundError) with the server's messages.

The Rust test `the_openai_python_client_gets_what_sample_prints` (tests/serve.rs, ignored by
default) runs it against a server it starts; .ci/run does so in a virtual environment. By hand:

    python3 -m venv /tmp/openai-venv && /tmp/openai-venv/bin/pip install openai
    cargo build --release
    target/release/tinyllm serve --checkpoint CHECKPOINT --port 8080 &
    /tmp/openai-venv/bin/python tests/interop/openai_check.py http://127.0.0.1:8080 \
        target/release/tinyllm CHECKPOINT

CHECKPOINT is a train artifact or a run folder, e.g. runs/quickstart/default.
"""

import subprocess
import sys

import openai

# (prompt, seed, temperature, top_p, top_k, max_tokens)
SETTINGS = [
    ("Tom had a", 7, 0.8, 0.9, 0, 200),
    ("Lily", 3, 1.0, 1.0, 5, 12),
    ("", 11, 0.0, 1.0, 0, 200),
]


def sample(tinyllm, checkpoint, prompt, seed, temperature, top_p, top_k, max_tokens):
    """What `tinyllm sample` prints after the prompt, and its stop as a finish_reason."""
    args = [tinyllm, "sample", "--checkpoint", checkpoint]
    if prompt:
        args += ["--prompt", prompt]
    args += ["--seed", str(seed), "--temperature", str(temperature), "--top-p", str(top_p),
             "--top-k", str(top_k), "--max-new-tokens", str(max_tokens)]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    assert done.stdout.startswith(prompt) and done.stdout.endswith("\n"), done.stdout
    reason = "stop" if "stopped at end of story" in done.stderr else "length"
    return done.stdout[len(prompt):-1], reason


def expect_error(exception, call, param=None, code=None):
    """Runs `call`, which must raise `exception` with OpenAI's error fields; returns its message."""
    try:
        call()
    except exception as e:
        error = e.body.get("error", e.body)
        assert error["param"] == param, (error, param)
        assert error["code"] == code, (error, code)
        assert error["message"] in str(e), (error, str(e))
        return error["message"]
    raise AssertionError(f"no {exception.__name__}")


def main():
    url, tinyllm, checkpoint = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="unused", max_retries=0)
    print(f"openai {openai.__version__}")
    models = client.models.list().data
    assert len(models) == 1, models
    model = models[0].id

    for prompt, seed, temperature, top_p, top_k, max_tokens in SETTINGS:
        expected = sample(tinyllm, checkpoint, prompt, seed, temperature, top_p, top_k, max_tokens)
        options = dict(model=model, prompt=prompt, seed=seed, temperature=temperature,
                       top_p=top_p, max_tokens=max_tokens, extra_body={"top_k": top_k})
        completion = client.completions.create(**options)
        choice = completion.choices[0]
        assert (choice.text, choice.finish_reason) == expected, (choice, expected)
        usage = completion.usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage

        text, reason, counted = "", None, None
        for chunk in client.completions.create(**options, stream=True,
                                               stream_options={"include_usage": True}):
            if chunk.usage is not None:
                counted = chunk.usage
            for piece in chunk.choices:
                assert reason is None, "a chunk after the finish reason"
                text += piece.text
                reason = piece.finish_reason
        assert (text, reason) == expected, ((text, reason), expected)
        assert counted == usage, (counted, usage)
        print(f"{prompt!r} seed {seed}: {len(text)} characters, finish_reason {reason}: "
              "the same as tinyllm sample, whole and streamed")

    stopped = client.completions.create(model=model, prompt="Tom had a", seed=5, max_tokens=60)
    text = stopped.choices[0].text
    if len(text) > 12:
        stop = text[len(text) // 2:len(text) // 2 + 3]
        cut = client.completions.create(model=model, prompt="Tom had a", seed=5, max_tokens=60,
                                        stop=[stop])
        assert cut.choices[0].text == text[:text.index(stop)], (cut, stop)
        assert cut.choices[0].finish_reason == "stop"
        print(f"stop {stop!r}: cut before it")

    message = expect_error(openai.BadRequestError, lambda: client.completions.create(
        model=model, prompt="Tom", max_tokens=-1), param="max_tokens")
    assert "-1" in message, message
    expect_error(openai.BadRequestError, lambda: client.completions.create(
        model=model, prompt="Tom", top_p=0), param="top_p")
    expect_error(openai.BadRequestError, lambda: client.completions.create(
        model=model, prompt="Tom", n=2), param="n")
    expect_error(openai.BadRequestError, lambda: client.completions.create(
        model=model, prompt=["Tom", "Lily"]), param="prompt")
    message = expect_error(openai.NotFoundError, lambda: client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Tom"), param="model", code="model_not_found")
    assert model in message, message
    print("bad requests: BadRequestError and NotFoundError with the server's messages")
    print("all checks passed")


if __name__ == "__main__":
    main()
