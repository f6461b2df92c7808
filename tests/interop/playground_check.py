"""Checks the playground page that `tinyllm serve` answers at `/`, in a real headless Chromium:
the page names the server's model, a prompt typed into it and "Generate" pressed stream a story
into the page piece by piece, the tokens/s figure appears, and with temperature 0 the story is
exactly the server's own greedy completion of that prompt. Saves a screenshot.

It drives Debian's Chromium through Playwright (the `playwright` package from PyPI; its own
browser download is not needed):

    apt-get install chromium
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install playwright
    tinyllm serve --checkpoint runs/quickstart/default --port 8080 &
    /tmp/venv/bin/python tests/interop/playground_check.py http://127.0.0.1:8080 playground.png

`tests/serve.rs` runs it (an ignored test that `.ci/run` runs) when TINYLLM_BROWSER_PYTHON
names a Python with Playwright; CHROMIUM overrides the browser's path (default: chromium on the
PATH).
"""

import json
import os
import shutil
import sys
import urllib.request

from playwright.sync_api import sync_playwright

PROMPT = "Once upon a time"
MAX_TOKENS = 40


def greedy_completion(url, model):
    """The server's own answer to the request the page makes, not streamed."""
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                       "temperature": 0, "top_p": 1}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["choices"][0]["text"]


def main():
    url, screenshot = sys.argv[1].rstrip("/"), sys.argv[2]
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    assert chromium, "no chromium on the PATH; install it (Debian: apt-get install chromium) or set CHROMIUM"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        assert page.title() == "tinyllm playground", page.title()
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model: ')")
        model = page.text_content("#model").removeprefix("model: ")

        page.fill("#prompt", PROMPT)
        # Sliders are set the way a user's drag sets them: a value, then an input event.
        for slider, value in [("temperature", 0), ("max-tokens", MAX_TOKENS)]:
            page.eval_on_selector(f"#{slider}", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)
        assert page.text_content("#temperature-value") == "0.00"
        # Counts the story's updates, to see it arrive in pieces rather than all at once.
        page.evaluate("""() => {
            window.storyUpdates = 0;
            new MutationObserver(() => { window.storyUpdates += 1; })
                .observe(document.getElementById('story'), {characterData: true, childList: true, subtree: true});
        }""")
        page.click("#generate")
        page.wait_for_function("document.getElementById('stats').textContent.includes('tokens/s')", timeout=120_000)
        page.wait_for_function("!document.getElementById('generate').disabled", timeout=120_000)

        story = page.text_content("#story")
        stats = page.text_content("#stats")
        updates = page.evaluate("window.storyUpdates")
        error = page.text_content("#error")
        page.screenshot(path=screenshot, full_page=True)
        browser.close()

    assert not errors, f"script errors in the page: {errors}"
    assert not error, f"the page shows an error: {error}"
    assert story.startswith(PROMPT), story
    expected = greedy_completion(url, model)
    assert story[len(PROMPT):] == expected, f"page: {story[len(PROMPT):]!r}\nAPI:  {expected!r}"
    assert updates > 3, f"the story arrived in {updates} updates; it should stream in token by token"
    print(f"playground: {len(story) - len(PROMPT)} characters streamed in {updates} updates; "
          f"stats: {stats}; screenshot: {screenshot}")


if __name__ == "__main__":
    main()
