"""Writes the golden files tests/llama_golden.rs reads: tiny random Llama models saved by
Hugging Face transformers, token ids, and the logits LlamaForCausalLM computes for them.

Run once, in a virtual environment with torch, transformers and safetensors:

    python -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
    /tmp/venv/bin/python tests/golden/make_golden.py

CI never runs this; it reads the committed outputs.
"""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent

# dim 32, 2 layers, 4 heads, 2 kv heads, vocab 64; the SwiGLU hidden size is llama2.c's
# rule: 4*32 -> two thirds -> 85 -> rounded up to a multiple of 4 = 88.
DIMS = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=4, max_seq_len=16)


def make(tied: bool, seed: int) -> None:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=DIMS["vocab_size"],
        hidden_size=DIMS["dim"],
        intermediate_size=88,
        num_hidden_layers=DIMS["n_layers"],
        num_attention_heads=DIMS["n_heads"],
        num_key_value_heads=DIMS["n_kv_heads"],
        max_position_embeddings=DIMS["max_seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    # Weights larger than the usual 0.02 init, so the logits are far from uniform and a wrong
    # op shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.3)
    ids = torch.randint(0, DIMS["vocab_size"], (2, DIMS["max_seq_len"]))
    with torch.no_grad():
        logits = model(ids).logits.float()
    name = "tied" if tied else "untied"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(HERE / f"tiny_{name}.safetensors"))
    record = {
        "made_by": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "dims": DIMS,
        "tie_embeddings": tied,
        "norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "input_ids": ids.tolist(),
        "logits": [round(x, 7) for x in logits.flatten().tolist()],
    }
    (HERE / f"tiny_{name}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    make(tied=True, seed=1)
    make(tied=False, seed=2)
    print("wrote", sorted(p.name for p in HERE.glob("tiny_*")))
