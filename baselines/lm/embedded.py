"""The embedded default model: a ~1M-parameter Qwen2-style causal LM and a 2k byte-level BPE tokenizer.

It is what `llm-coop train` uses when `--model` is omitted, so that training runs offline on a CPU with no
download. The built files are committed under `baselines/lm/embedded_model/` (about 4 MB in fp32); this module
rebuilds them bit-for-bit on the same Python and torch versions:

    python -m baselines.lm.embedded build            # seed 0, writes baselines/lm/embedded_model/

Recipe (docs/learning_on_cpu.md says why this setting):
- corpus: English docstring paragraphs of the Python standard library of the running interpreter (files in
  sorted order; doctest and code-like paragraphs dropped), up to 1.2 MB, plus the paragraphs of the
  coop_writing-v0 TRAIN-split prompts (three times; the test split is never read);
- tokenizer: byte-level BPE, vocabulary 2,000, special token `<|endoftext|>` (EOS and pad);
- model: 4 layers, hidden 128, 4 heads / 2 KV heads, MLP 384, tied embeddings (1.05M parameters);
- pretraining: next-token LM, one thread, 3 x 768 tokens per step (the context covers a writing prompt and
  its response), 900 steps of AdamW lr 3e-3 with warmup and cosine decay (a fixed step count, not a time
  budget, so the result is reproducible; ~4.5 min), EOS between paragraphs so sampled text ends by itself.

What the model knows is the shape of English prose, not how to summarise: what MAGRPO teaches it at this
scale is the structure the reward pays for (lengths, stopping, unique words, a transition word).
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded_model"
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class BuildConfig:
    """How the embedded model is built; every field is recorded in `build_info.json`."""

    seed: int = 0
    """Seed for weight init and batch order."""
    corpus_chars: int = 1_200_000
    """Characters of docstring text to collect."""
    env_text: str = "coop_writing-v0"
    """Also use the paragraphs of this env's TRAIN-split prompts (never the test split); '' = none."""
    vocab_size: int = 2000
    """BPE vocabulary size, special token included."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 384
    """MLP width."""
    seq_len: int = 768
    """Tokens per training sequence (the writing prompts are 290-600 tokens, plus the response)."""
    batch_size: int = 3
    """Sequences per pretraining step."""
    steps: int = 900
    """Pretraining steps."""
    lr: float = 3e-3
    """Peak learning rate (linear warmup over 5% of steps, cosine decay to 10%)."""


def _is_prose(paragraph: str) -> bool:
    if ">>>" in paragraph or "::" in paragraph or "{" in paragraph or "$" in paragraph:
        return False
    words = paragraph.split()
    if len(words) < 8:
        return False
    alpha = sum(ch.isalpha() or ch.isspace() for ch in paragraph)
    return alpha / len(paragraph) > 0.85 and paragraph[0].isupper()


def collect_corpus(max_chars: int) -> list[str]:
    """Docstring paragraphs of the standard library, in sorted file order, up to `max_chars` characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for block in re.split(r"\n\s*\n", doc):
                if any(line.startswith((" ", "\t")) for line in block.splitlines()):
                    continue
                text = " ".join(block.split())
                if _is_prose(text):
                    paragraphs.append(text)
                    total += len(text) + 1
                    if total >= max_chars:
                        return paragraphs
    return paragraphs


def collect_env_paragraphs(env_id: str) -> list[str]:
    """Prose paragraphs of the prompts of an env's train split (instructions and posts; the test split is
    never read)."""
    from llm_coop_envs import make

    env = make(env_id)
    paragraphs: list[str] = []
    for task_id in env.task_ids("train"):
        obs, _ = env.reset(seed=0, options={"task_id": task_id})
        for agent in env.possible_agents:
            for block in re.split(r"\n\s*\n", obs[agent]["prompt"]):
                text = " ".join(block.split())
                if len(text.split()) >= 8 and text not in paragraphs:
                    paragraphs.append(text)
    return paragraphs


def build_tokenizer(paragraphs: list[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(paragraphs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def make_model(cfg: BuildConfig, vocab_size: int, eos_id: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return Qwen2ForCausalLM(config)


def lm_loss(model, batch):  # batch: (B, T+1) token ids
    import torch

    logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def corpus_sequences(cfg: BuildConfig, log=print):
    """The tokenizer, the (train, validation) sequences (N, T+1) of the corpus, and the env paragraph count."""
    import torch

    paragraphs = collect_corpus(cfg.corpus_chars)
    env_paragraphs = collect_env_paragraphs(cfg.env_text) if cfg.env_text else []
    paragraphs = paragraphs + env_paragraphs * 3  # the env text is small: seen three times as often
    tokenizer = build_tokenizer(paragraphs, cfg.vocab_size)
    ids: list[int] = []
    for text in paragraphs:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    data = torch.tensor(ids, dtype=torch.long)
    n_seq = len(data) // (cfg.seq_len + 1)
    seqs = data[: n_seq * (cfg.seq_len + 1)].view(n_seq, cfg.seq_len + 1)  # (N, T+1)
    n_val = max(8, n_seq // 50)
    log(f"corpus: {len(paragraphs)} paragraphs, {sum(map(len, paragraphs))} chars, {len(ids)} tokens")
    return tokenizer, seqs[n_val:], seqs[:n_val], len(env_paragraphs)


def pretrain(cfg: BuildConfig, out_dir: Path = EMBEDDED_DIR, log=print) -> dict:
    """Build corpus, tokenizer and model; pretrain; save everything to `out_dir`. Returns the build info."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    tokenizer, train, val, env_paragraphs = corpus_sequences(cfg, log)
    eos_id = tokenizer.eos_token_id

    model = make_model(cfg, len(tokenizer), eos_id)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = lm_loss(model, val)
        model.train()
        return float(loss)

    first_val = val_loss()
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for step in range(cfg.steps):
        rows = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
        batch = train[rows]  # (B, T+1)
        loss = lm_loss(model, batch)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    info = {
        "build_command": "python -m baselines.lm.embedded build",
        "config": asdict(cfg),
        "parameters": n_params,
        "val_loss_before": round(first_val, 4),
        "val_loss_after": round(val_loss(), 4),
        "train_tokens": int(train.numel()),
        "env_paragraphs": env_paragraphs,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "build_seconds": round(time.time() - t0, 1),
    }
    _save(out_dir, model, tokenizer, info)
    log(json.dumps(info))
    return info


def _save(out_dir: Path, model, tokenizer, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    import tyro

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "build":
        raise SystemExit("usage: python -m baselines.lm.embedded build [--seed N --steps N --out-dir DIR]")

    @dataclass
    class BuildArgs:
        config: BuildConfig = BuildConfig()
        """Build settings."""
        out_dir: Path = EMBEDDED_DIR
        """Where to write the model and tokenizer."""

    parsed = tyro.cli(BuildArgs, args=args[1:])
    pretrain(parsed.config, parsed.out_dir)


if __name__ == "__main__":
    main()
