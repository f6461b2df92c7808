"""PyTorch reference for `tinyllm bench train --device cuda`: the same LLaMA2 (Hugging Face's
LlamaForCausalLM, built from a config, nothing downloaded), the same batch, one full training
step (forward, backward, clip 1.0, AdamW with weight decay 0.1 on the 2-D weights), timed after
warm-up with the GPU synchronised, in four modes:

  eager          f32 (matmuls in true f32: TF32 stays off, PyTorch's default, as in cuBLAS sgemm)
  compile        torch.compile, f32
  eager-bf16     bf16 autocast
  compile-bf16   torch.compile + bf16 autocast

One JSON line per (config, mode), flushed as it is measured, so a run cut short by a time box
keeps what it measured; a mode that fails is a line with its error, and the rest go on.

    python3 scripts/pytorch_gpu_reference.py --configs tutorial:8:256,stories110M:8:1024

Configs are preset:batch:seq with the presets of src/model/shape.rs. Without transformers
installed the model is the same architecture written out here (llama2.c's model.py), and each
line says which one ran. --device cpu runs the same code on the CPU (scripts/gpu-check.sh's dry
run on a machine without a GPU).
"""
import argparse, contextlib, json, math, os, sys, time

# Never reach for the network (the GPU machine has none): the model is built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn as nn
import torch.nn.functional as F

# dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of (src/model/shape.rs).
PRESETS = {
    "tutorial": (288, 8, 8, 4, 4096, 32),
    "stories260K": (64, 5, 8, 4, 512, 4),
    "stories15M": (288, 6, 6, 6, 32000, 32),
    "stories42M": (512, 8, 8, 8, 32000, 32),
    "stories110M": (768, 12, 12, 12, 32000, 32),
    "quickstart": (128, 4, 4, 2, 2048, 32),
}
MODES = ["eager", "compile", "eager-bf16", "compile-bf16"]


def hidden_dim(dim, multiple_of):
    """llama2.c's SwiGLU width: 4·dim, two thirds of it, rounded up to multiple_of."""
    hidden = 2 * (4 * dim) // 3
    return -(-hidden // multiple_of) * multiple_of


class Llama(nn.Module):
    """llama2.c's model.py (tied head, RMSNorm, rotate_half RoPE, GQA, SwiGLU), for machines
    without transformers; the same parameters as LlamaForCausalLM's."""

    def __init__(self, dim, n_layers, n_heads, n_kv_heads, vocab, hidden, seq):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            layer = nn.Module()
            layer.attn_norm = nn.RMSNorm(dim, eps=1e-5)
            layer.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
            layer.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
            layer.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
            layer.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
            layer.mlp_norm = nn.RMSNorm(dim, eps=1e-5)
            layer.w1 = nn.Linear(dim, hidden, bias=False)
            layer.w3 = nn.Linear(dim, hidden, bias=False)
            layer.w2 = nn.Linear(hidden, dim, bias=False)
            self.layers.append(layer)
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        angles = torch.outer(torch.arange(seq).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rope(self, x):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        t = x.shape[2]
        return x * self.cos[:t] + rotated * self.sin[:t]

    def forward(self, input_ids, labels):
        b, t = input_ids.shape
        x = self.embed(input_ids)
        for layer in self.layers:
            h = layer.attn_norm(x)
            q = layer.wq(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = layer.wk(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = layer.wv(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rope(q), self.rope(k)
            groups = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer.wo(a.transpose(1, 2).reshape(b, t, -1))
            h = layer.mlp_norm(x)
            x = x + layer.w2(F.silu(layer.w1(h)) * layer.w3(h))
        logits = self.head(self.norm(x))
        # As LlamaForCausalLM does with labels = input_ids: position i predicts token i + 1.
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                               labels[:, 1:].reshape(-1))


def make_model(preset, seq):
    dim, n_layers, n_heads, n_kv_heads, vocab, multiple_of = PRESETS[preset]
    hidden = hidden_dim(dim, multiple_of)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return Llama(dim, n_layers, n_heads, n_kv_heads, vocab, hidden, seq), vocab, "llama2.c model.py (transformers not installed)"
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv_heads, max_position_embeddings=seq,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, attention_dropout=0.0)
    model = LlamaForCausalLM(cfg)
    impl = getattr(model.config, "_attn_implementation", None) or "default"
    return model, vocab, f"transformers {__import__('transformers').__version__} LlamaForCausalLM (attention: {impl})"


def loss_of(model, x):
    out = model(input_ids=x, labels=x)
    return out if torch.is_tensor(out) else out.loss


def measure(preset, batch, seq, mode, steps, warmup, device):
    torch.manual_seed(0)
    model, vocab, impl = make_model(preset, seq)
    model = model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=5e-4, betas=(0.9, 0.95))
    fwd = torch.compile(model) if mode.startswith("compile") else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode.endswith("bf16")
                else contextlib.nullcontext())
    x = torch.randint(0, vocab, (batch, seq), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, first = [], None
    for i in range(warmup + steps):
        sync()
        t = time.perf_counter()
        with autocast:
            loss = loss_of(fwd, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        elapsed = time.perf_counter() - t
        if i == 0:
            first = elapsed  # compilation, for the compile modes
        if i >= warmup:
            times.append(elapsed)
    times.sort()
    med = times[len(times) // 2]
    loss = loss.item()
    if not math.isfinite(loss):
        raise RuntimeError(f"the loss is {loss}")
    return {"params": params, "impl": impl, "steps": steps, "warmup": warmup,
            "median_ms_per_step": round(med * 1e3, 2), "tokens_per_sec": round(batch * seq / med, 1),
            "first_step_s": round(first, 2), "last_loss": round(loss, 4),
            "peak_memory_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                               if device.type == "cuda" else None)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="tutorial:8:256",
                   help="comma-separated preset:batch:seq")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seconds", type=float, default=None,
                   help="stop starting measurements once this much time is spent (the rest "
                        "are lines with skipped), so a caller's time box keeps every line")
    p.add_argument("--out", default=None, help="append the JSON lines to this file too")
    a = p.parse_args()
    started = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("pytorch_gpu_reference: torch.cuda.is_available() is False "
                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    configs = []
    for c in a.configs.split(","):
        preset, batch, seq = c.split(":")
        if preset not in PRESETS:
            sys.exit(f"pytorch_gpu_reference: unknown preset {preset} (one of {', '.join(PRESETS)})")
        configs.append((preset, int(batch), int(seq)))
    modes = a.modes.split(",")
    for m in modes:
        if m not in MODES:
            sys.exit(f"pytorch_gpu_reference: unknown mode {m} (one of {', '.join(MODES)})")
    out = open(a.out, "a") if a.out else None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    failures = 0
    # Mode by mode over every config: the quick eager figures first, compilation last.
    for mode in modes:
        for preset, batch, seq in configs:
            line = {"preset": preset, "batch": batch, "seq": seq, "mode": mode, "device": gpu,
                    "torch": torch.__version__, "cuda": torch.version.cuda}
            spent = time.perf_counter() - started
            if a.seconds is not None and spent > a.seconds:
                line["skipped"] = f"out of time ({spent:.0f} s of {a.seconds:.0f} spent)"
            else:
                try:
                    line.update(measure(preset, batch, seq, mode, a.steps, a.warmup, device))
                except Exception as e:  # one mode's failure (a compiler missing) must not stop the rest
                    failures += 1
                    line["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
                finally:
                    if mode.startswith("compile"):
                        torch._dynamo.reset()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            text = json.dumps(line)
            print(text, flush=True)
            if out:
                out.write(text + "\n")
                out.flush()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
