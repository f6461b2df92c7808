"""Checks `tinyllm export --format gguf` against llama.cpp itself, through llama-cpp-python: for
each prompt, llama.cpp's tokens (with BOS) are tinyllm's ids, its logits over the prompt agree
with `tinyllm score`'s, and its greedy continuation is token for token, and in text, what
`tinyllm sample --temperature 0 --precision f32` writes.

CI does not run it (it compiles llama.cpp). Run it in a virtual environment:

    python3 -m venv /tmp/llama && /tmp/llama/bin/pip install llama-cpp-python numpy
    cargo build --release
    /tmp/llama/bin/python tests/interop/gguf_check.py target/release/tinyllm CHECKPOINT \
        [--format FORMAT] [--text-file PATH ...]

CHECKPOINT is a train artifact or a run folder, e.g. runs/tinystories-10min/default; FORMAT is
gguf (the default: f32, which must agree to rounding) or gguf-bf16, gguf-f16, gguf-q8_0 (whose
rounded weights may make greedy decoding part ways; the script then reports where). Each
--text-file (a corpus file, say) must also be encoded to the same ids by both, whole.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import llama_cpp
import numpy as np
from llama_cpp import Llama

PROMPTS = [
    "Once upon a time",
    "Lily and her dog went to the park. They saw a big",
    "Tom had 3 red balls!  He said, \u201cLet's play.\u201d\nThen",
]
NEW_TOKENS = 60
BOS, EOS = 1, 2


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def main():
    parser = argparse.ArgumentParser(description="tinyllm's GGUF export against llama.cpp")
    parser.add_argument("tinyllm")
    parser.add_argument("checkpoint")
    parser.add_argument("--format", default="gguf",
                        choices=["gguf", "gguf-bf16", "gguf-f16", "gguf-q8_0"])
    parser.add_argument("--text-file", action="append", default=[])
    args = parser.parse_args()
    tinyllm, checkpoint, fmt = args.tinyllm, args.checkpoint, args.format
    exact = fmt == "gguf"
    out = tempfile.mkdtemp() + "/gguf"
    print(run(tinyllm, "export", "--checkpoint", checkpoint, "--format", fmt, "--out", out).strip())
    print(f"llama-cpp-python {llama_cpp.__version__}")
    if not exact:
        # llama.cpp's CPU "extra buffer types" (weights repacked for AMX and wide SIMD) crash on
        # q8_0 matmuls on some CPUs (seen with llama-cpp-python 0.3.36 on an AMX Xeon, for our
        # file and for llama.cpp's own quantization of the f32 export alike): use plain buffers.
        default_params = llama_cpp.llama_model_default_params

        def plain_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = plain_buffers
        llama_cpp.llama.llama_cpp.llama_model_default_params = plain_buffers
    nested = os.path.join(checkpoint, "artifacts", "train")
    train = nested if os.path.isdir(nested) else checkpoint
    with open(os.path.join(train, "config.json")) as f:
        context = json.load(f)["max_position_embeddings"]
    # An f32 KV cache (llama.cpp's default is f16) so that the logits can agree to rounding.
    f32 = llama_cpp.GGML_TYPE_F32
    llm = Llama(model_path=out + "/model.gguf", n_ctx=context, n_threads=2, logits_all=True,
                type_k=f32, type_v=f32, verbose=False, seed=0)
    print(f"context {context}, vocab {llm.n_vocab()}")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ends = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    print(f"llama.cpp ends generation at ids {ends}")
    failures = [] if sorted(ends) == [BOS, EOS] else ["end-of-generation ids (tinyllm's: EOS, BOS)"]

    for prompt in PROMPTS:
        print(f"\nprompt {prompt!r}")
        scored = json.loads(run(tinyllm, "score", "--checkpoint", checkpoint, "--text", prompt, "--json"))
        ours_ids = scored["ids"]
        theirs_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        if theirs_ids != ours_ids:
            failures.append(f"tokens of {prompt!r}")
            print(f"  tokens DIFFER:\n    llama.cpp {theirs_ids}\n    tinyllm   {ours_ids}")
            continue
        print(f"  tokens: the same {len(ours_ids)} ids {ours_ids}")

        llm.reset()
        llm.eval(ours_ids)
        theirs_logits = np.array(llm.scores[: len(ours_ids)])
        diff = float(np.abs(theirs_logits - np.array(scored["logits"])).max())
        print(f"  logits over the prompt: max |diff| {diff:.2e}")
        if exact and diff > 1e-4:
            failures.append(f"logits of {prompt!r}")

        # Greedy decoding, stopping where tinyllm stops: at EOS or BOS (both llama.cpp's
        # end-of-generation tokens, as checked above). Both stop at the context's end (past it,
        # tinyllm would slide its window, which llama.cpp does not).
        budget = min(NEW_TOKENS, context - len(ours_ids))
        new = []
        while len(new) < budget:
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in (EOS, BOS):
                break
            new.append(token)
            llm.eval([token])
        theirs_text = prompt + llm.detokenize(new, prev_tokens=ours_ids).decode("utf-8", "replace")

        ours_text = run(tinyllm, "sample", "--checkpoint", checkpoint, "--prompt", prompt,
                        "--temperature", "0", "--precision", "f32",
                        "--max-new-tokens", str(budget)).rstrip("\n")
        # tinyllm prints text, not ids: its ids here are those of its text, encoded again, which
        # llama.cpp's encoder must give too. They equal llama.cpp's generated ids except where
        # encoding the whole text merges the prompt's last piece with the first new one.
        ours_all = json.loads(run(tinyllm, "score", "--checkpoint", checkpoint, "--text", ours_text,
                                  "--json"))["ids"]
        if llm.tokenize(ours_text.encode(), add_bos=True, special=False) != ours_all:
            failures.append(f"tokens of the continuation of {prompt!r}")
            print("  tokens of tinyllm's continuation DIFFER in llama.cpp")
        theirs_all = ours_ids + new
        at = next((i for i, (a, b) in enumerate(zip(ours_all, theirs_all)) if a != b),
                  min(len(ours_all), len(theirs_all)))
        if ours_text != theirs_text:
            print(f"  greedy DIFFERS from token {at - len(ours_ids)}:\n"
                  f"    llama.cpp {theirs_text!r}\n    tinyllm   {ours_text!r}")
            if exact:
                failures.append(f"greedy continuation of {prompt!r}")
        elif at == len(theirs_all):
            print(f"  greedy: the same {len(new)} tokens and text: {ours_text!r}")
        else:
            print(f"  greedy: the same text from llama.cpp's {len(new)} tokens: {ours_text!r}\n"
                  f"    (re-encoded, the text's ids join across the prompt's end at position {at}: "
                  f"llama.cpp generated {theirs_all[at - 1:at + 2]}, the text encodes to "
                  f"{ours_all[at - 1:at + 2]})")

    for path in args.text_file:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        ours = [int(i) for i in run(tinyllm, "tokenize", "--tokenizer", train, "--ids-only",
                                    "--file", path).split()]
        theirs = llm.tokenize(text.encode(), add_bos=False, special=False)
        if theirs == ours:
            print(f"\n{path}: the same {len(ours)} ids for its {len(text)} characters")
            continue
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                  min(len(ours), len(theirs)))
        failures.append(f"tokens of {path}")
        print(f"\n{path}: ids DIFFER from position {at}: llama.cpp {theirs[at:at + 5]}, "
              f"tinyllm {ours[at:at + 5]}")

    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    print("\nOK")


if __name__ == "__main__":
    main()
