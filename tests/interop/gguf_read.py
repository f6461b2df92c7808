"""Reads a `tinyllm export --format gguf` file with the `gguf` package (llama.cpp's own Python
reader) and checks it against tinyllm: the metadata against the model's config.json, every
tensor's shape and values against model.safetensors (q and k rows put back from llama.cpp's
adjacent-pair order), and the pieces against tinyllm's ids of a few texts.

tests/export.rs runs it when TINYLLM_GGUF_PYTHON names a Python with `gguf` and numpy. By hand:

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf
    cargo build --release
    target/release/tinyllm export --checkpoint CHECKPOINT --format gguf --out /tmp/out
    /tmp/gguf-venv/bin/python tests/interop/gguf_read.py target/release/tinyllm CHECKPOINT /tmp/out/model.gguf

CHECKPOINT is a train artifact or a run folder, e.g. runs/quickstart/default.
"""

import importlib.metadata
import json
import os
import subprocess
import sys

import gguf
import numpy as np

TEXTS = ["Tom had a cat.", "Lily saw 12 big dogs!", "h\u00e9llo \u2603 ok\nnew line"]

# tinyllm's tensor names by llama.cpp's, per layer.
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def train_folder(checkpoint):
    nested = os.path.join(checkpoint, "artifacts", "train")
    return nested if os.path.isdir(nested) else checkpoint


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F32", entry
        start, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(entry["shape"])
    return tensors


def from_adjacent_pairs(weight, heads):
    """llama.cpp's row 2i + j of each head is tinyllm's row j * head_dim / 2 + i."""
    rows, columns = weight.shape
    head_dim = rows // heads
    w = weight.reshape(heads, head_dim // 2, 2, columns)
    return w.transpose(0, 2, 1, 3).reshape(rows, columns)


def field(reader, key):
    assert key in reader.fields, f"{key} is missing"
    return reader.fields[key].contents()


def main():
    tinyllm, checkpoint, path = sys.argv[1], sys.argv[2], sys.argv[3]
    folder = train_folder(checkpoint)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    ours = load_safetensors(os.path.join(folder, "model.safetensors"))
    reader = gguf.GGUFReader(path)

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim, layers = config["hidden_size"], config["num_hidden_layers"]
    expected = {
        "general.architecture": "llama",
        "general.alignment": 32,
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": dim,
        "llama.block_count": layers,
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.rope.dimension_count": dim // heads,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": config["bos_token_id"],
        "tokenizer.ggml.eos_token_id": config["eos_token_id"],
        "tokenizer.ggml.eot_token_id": config["bos_token_id"],
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
    }
    for key, value in expected.items():
        assert field(reader, key) == value, f"{key}: {field(reader, key)!r} != {value!r}"
    for key, value in [
        ("llama.attention.layer_norm_rms_epsilon", config["rms_norm_eps"]),
        ("llama.rope.freq_base", config["rope_theta"]),
    ]:
        assert np.float32(field(reader, key)) == np.float32(value), key
    print(f"gguf {importlib.metadata.version('gguf')}: {len(reader.fields)} metadata keys, "
          f"{len(expected) + 2} checked")

    names = [("token_embd.weight", "model.embed_tokens.weight")]
    for layer in range(layers):
        names += [(f"blk.{layer}.{g}.weight", f"model.layers.{layer}.{o}.weight")
                  for g, o in LAYER_NAMES.items()]
    names.append(("output_norm.weight", "model.norm.weight"))
    if not config["tie_word_embeddings"]:
        names.append(("output.weight", "lm_head.weight"))
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == [g for g, _ in names], list(tensors)
    worst = 0.0
    for gguf_name, our_name in names:
        tensor = tensors[gguf_name]
        want = ours[our_name]
        # The gguf package gives shapes innermost first, as the file stores them.
        assert list(tensor.shape) == list(reversed(want.shape)), (gguf_name, tensor.shape)
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
        if gguf_name.endswith("attn_q.weight"):
            values = from_adjacent_pairs(values, heads)
        elif gguf_name.endswith("attn_k.weight"):
            values = from_adjacent_pairs(values, kv_heads)
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            assert np.array_equal(values, want), gguf_name
        else:
            scale = np.abs(want).max()
            diff = float(np.abs(values - want).max())
            worst = max(worst, diff / scale)
            assert diff <= scale / 100, (gguf_name, diff, scale)
    types = sorted({t.tensor_type.name for t in reader.tensors})
    print(f"{len(names)} tensors ({', '.join(types)}): shapes match, values "
          + ("identical" if worst == 0 else f"within {worst:.1e} of each tensor's largest"))

    tokens = field(reader, "tokenizer.ggml.tokens")
    token_types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == config["vocab_size"] == len(field(reader, "tokenizer.ggml.scores"))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and token_types[:3] == [2, 3, 3]
    assert all(tokens[3 + b] == f"<0x{b:02X}>" and token_types[3 + b] == 6 for b in range(256))
    for text in TEXTS:
        out = subprocess.run([tinyllm, "score", "--checkpoint", checkpoint, "--text", text, "--json"],
                             check=True, capture_output=True, text=True).stdout
        ids = json.loads(out)["ids"]
        assert ids[0] == config["bos_token_id"], ids
        decoded = bytearray()
        for i in ids[1:]:
            if token_types[i] == 6:
                decoded.append(int(tokens[i][3:5], 16))
            else:
                decoded += tokens[i].replace("\u2581", " ").encode()
        assert decoded.decode() == " " + text, (decoded, text)
    print(f"tokenizer: {len(tokens)} pieces; tinyllm's ids of {len(TEXTS)} texts spell them")
    print("OK")


if __name__ == "__main__":
    main()
