"""The tutorial's training recipe in PyTorch, for a wall-clock budget, on tinyllm's token shards:
the reference the ten-minute pipeline is measured against (BENCHMARKS.md, "Time to quality").

The recipe is the tutorial's (llama2.c's train.py, which it follows): its LLaMA2 (as Hugging
Face's LlamaForCausalLM, with train.py's initialisation), AdamW with betas 0.9/0.95 and weight
decay 0.1 on the 2-D weights, lr 5e-4 with a linear warmup over the first 10% of the run and a
cosine decay to 0, batch 8 x 256, gradient clipping at 1.0, f32 eager mode (its CPU path). Its
loader: the shards cut into fixed windows of seq_len + 1 tokens every seq_len tokens, shuffled
each epoch. The schedule follows the clock (progress = elapsed / budget), so the run ends at the
budget with the learning rate at 0. Then one validation pass over every window of the
validation shards, scored as tinyllm scores it: nats per token, and bits per byte of text.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers
    tinyllm run pipelines/tinystories-10min.toml --until pretokenize
    OMP_NUM_THREADS=2 /tmp/ref/bin/python scripts/pytorch_time_budget_reference.py \\
        --shards .tinyllm/cache/pretokenize/<key> --seconds 600

`<key>` is the pretokenize stage's key, as `tinyllm run` prints it. Never needed by the tests.
"""
import argparse, json, math, time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--shards", required=True, help="a pretokenize artifact folder (with shards.json)")
p.add_argument("--seconds", type=float, default=600.0)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--warmup-fraction", type=float, default=0.1)
p.add_argument("--weight-decay", type=float, default=0.1)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--seed", type=int, default=1337)
p.add_argument("--dim", type=int, default=288); p.add_argument("--n-layers", type=int, default=8)
p.add_argument("--n-heads", type=int, default=8); p.add_argument("--n-kv-heads", type=int, default=4)
p.add_argument("--hidden-dim", type=int, default=768)
a = p.parse_args()

root = Path(a.shards)
manifest = json.loads((root / "shards.json").read_text())
vocab = manifest["vocab_size"]


def split(name):
    shards = [s for s in manifest["shards"] if s["split"] == name]
    tokens = [np.fromfile(root / s["file"], dtype=np.uint16).astype(np.int64) for s in shards]
    return tokens, sum(s["tokens"] for s in shards), sum(s["text_bytes"] for s in shards)


def windows(tokens):
    """Every seq+1-token window starting at a multiple of seq, shard by shard (llama2.c's cut)."""
    return [t[i * a.seq:i * a.seq + a.seq + 1] for t in tokens for i in range((len(t) - 1) // a.seq)]


train_tokens, _, _ = split("train")
val_tokens, val_count, val_bytes = split("val")
train_windows, val_windows = windows(train_tokens), windows(val_tokens)

torch.manual_seed(a.seed)
rng = np.random.default_rng(a.seed)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=a.dim, intermediate_size=a.hidden_dim,
                  num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads,
                  num_key_value_heads=a.n_kv_heads, max_position_embeddings=a.seq,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, attention_dropout=0.0)
model = LlamaForCausalLM(cfg).train()
# train.py's initialisation: N(0, 0.02) everywhere, N(0, 0.02 / sqrt(2 n_layers)) for the
# projections its model.py calls w3 and wo (here up_proj and o_proj).
with torch.no_grad():
    for name, q in model.named_parameters():
        if q.dim() == 2:
            scaled = name.endswith("up_proj.weight") or name.endswith("o_proj.weight")
            q.normal_(0.0, 0.02 / math.sqrt(2 * a.n_layers) if scaled else 0.02)
decay = [q for q in model.parameters() if q.dim() >= 2]
no_decay = [q for q in model.parameters() if q.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                         {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))


def lr_at(progress):
    if progress < a.warmup_fraction:
        return a.lr * progress / a.warmup_fraction
    t = (progress - a.warmup_fraction) / (1.0 - a.warmup_fraction)
    return a.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def batches():
    while True:
        for start in range(0, len(order := rng.permutation(len(train_windows))) - a.batch + 1, a.batch):
            yield torch.from_numpy(np.stack([train_windows[i] for i in order[start:start + a.batch]]))


steps, losses = 0, []
data = batches()
started = time.perf_counter()
while (elapsed := time.perf_counter() - started) < a.seconds:
    for group in opt.param_groups:
        group["lr"] = lr_at(elapsed / a.seconds)
    chunk = next(data)
    logits = model(input_ids=chunk[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), chunk[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    steps += 1
    losses.append(loss.item())
train_secs = time.perf_counter() - started

model.eval()
total, count = 0.0, 0
with torch.no_grad():
    for start in range(0, len(val_windows), a.batch):
        chunk = torch.from_numpy(np.stack(val_windows[start:start + a.batch]))
        logits = model(input_ids=chunk[:, :-1]).logits
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
nats = total / count
print(json.dumps({"recipe": "tutorial (PyTorch eager f32)", "seconds": a.seconds, "steps": steps,
                  "tokens": steps * a.batch * a.seq, "train_secs": round(train_secs, 1),
                  "last_train_loss": round(float(np.mean(losses[-10:])), 4),
                  "val_windows": len(val_windows), "val_loss": round(nats, 4),
                  "val_bpb": round(nats / math.log(2) * val_count / val_bytes, 4),
                  "threads": torch.get_num_threads(), "torch": torch.__version__}))
