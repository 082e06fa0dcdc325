#!/usr/bin/env python3
"""Peer benchmark for issue 8: Hugging Face `transformers` MambaForCausalLM on CUDA.

Measures, on the same checkpoint our C# code writes (config.json + model.safetensors):
  1. greedy decode with model.generate (prefill-only time and per-token step time), per batch size;
  2. one training step (forward with labels, backward, AdamW step), per batch size.
Decode runs first, on the untouched weights, so its greedy tokens can be compared with our C# greedy output;
training then changes the weights. Timings: torch.cuda.synchronize() around each call, warm-ups excluded,
medians of --reps. Prints a Markdown table and writes one JSON object (FILE.tmp, then os.replace).
"""
import argparse, datetime, gc, json, os, statistics, subprocess, sys, time

# Kernel names whose presence makes transformers' MambaMixer take its fused CUDA path instead of slow_forward.
KERNELS = ("selective_state_update", "selective_scan_fn", "causal_conv1d_fn", "causal_conv1d_update", "mamba_inner_fn")


def fail(msg, code=2):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return vals


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        fail(f"{message} (see --help)")


def parse_args():
    p = OneLineParser(description="transformers MambaForCausalLM peer benchmark (issue 8)")
    p.add_argument("--ckpt", required=True, help="HF Mamba folder: config.json + model.safetensors")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--train-batch", type=int_list, default=[8], help="one or more, e.g. 8 or 8,4,1")
    p.add_argument("--decode-tokens", type=int, default=128, help="new tokens N per generate (>= 2)")
    p.add_argument("--decode-batches", type=int_list, default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--prompt-file", help="JSON list of lists of ints (rows >= largest decode batch, equal lengths)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast with fp32 weights")
    p.add_argument("--force-slow", action="store_true", help="disable transformers' fused kernels if present")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    a = p.parse_args()
    for name in ("seq_len", "prompt_len", "reps"):
        if getattr(a, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1")
    if a.seq_len < 2:
        fail("--seq-len must be >= 2 (labels are shifted by one)")
    if a.decode_tokens < 2:
        fail("--decode-tokens must be >= 2 (per-token time is (t_N - t_1)/(N-1))")
    cfg_path = os.path.join(a.ckpt, "config.json")
    if not os.path.isfile(cfg_path):
        fail(f"checkpoint {a.ckpt}: config.json not found")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"checkpoint {cfg_path}: unreadable JSON ({e})")
    if cfg.get("model_type") != "mamba":
        fail(f"checkpoint {cfg_path}: model_type is {cfg.get('model_type')!r}, expected 'mamba'")
    if not any(os.path.isfile(os.path.join(a.ckpt, n)) for n in ("model.safetensors", "model.safetensors.index.json")):
        fail(f"checkpoint {a.ckpt}: model.safetensors not found")
    a.prompt_rows = None
    if a.prompt_file and not a.skip_decode:
        a.prompt_rows = read_prompt_file(a.prompt_file, int(cfg.get("vocab_size", 2**62)), max(a.decode_batches))
    return a


def read_prompt_file(path, vocab, max_b):
    """Prompt rows from --prompt-file (checked before the slow model load): first max_b rows, equal lengths."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"--prompt-file {path}: unreadable JSON ({e})")
    ok = isinstance(rows, list) and rows and all(isinstance(r, list) and r for r in rows)
    if not ok or any(type(v) is not int or not 0 <= v < vocab for r in rows for v in r):
        fail(f"--prompt-file {path}: need a non-empty list of non-empty lists of ints in [0, {vocab})")
    if len({len(r) for r in rows}) != 1:
        fail(f"--prompt-file {path}: rows have different lengths")
    if len(rows) < max_b:
        fail(f"--prompt-file {path}: {len(rows)} rows, largest decode batch is {max_b}")
    return rows[:max_b]


def main():
    a = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no internet there; keep transformers from trying the hub
    try:
        import torch
        import transformers
        from transformers import MambaForCausalLM
        import transformers.models.mamba.modeling_mamba as mm
    except ImportError as e:
        fail(f"cannot import torch/transformers ({e})", 3)
    if not torch.cuda.is_available():
        fail("CUDA is not available to torch", 3)
    dev = torch.device("cuda")
    bf16 = a.dtype == "bf16"
    try:  # transformers 5 takes dtype=, older versions torch_dtype=
        model = MambaForCausalLM.from_pretrained(a.ckpt, dtype=torch.float32)
    except TypeError:
        model = MambaForCausalLM.from_pretrained(a.ckpt, torch_dtype=torch.float32)
    model.to(dev)
    cfg = model.config

    # Which path does MambaMixer take? transformers 4.x has a module flag; 5.x looks the kernels up as module globals
    # (set when the mixers are built), so check after loading.
    def fast_path():
        flag = getattr(mm, "is_fast_path_available", None)
        return bool(flag) if flag is not None else all(getattr(mm, n, None) is not None for n in KERNELS)
    fast_available = fast_path()
    if a.force_slow:
        for n in KERNELS:
            if hasattr(mm, n):
                setattr(mm, n, None)
        if hasattr(mm, "is_fast_path_available"):
            mm.is_fast_path_available = False
    fast = fast_path()
    print(f"transformers {transformers.__version__}: fast path available={fast_available}, used={fast}"
          f" ({'fused mamba_ssm/causal_conv1d kernels' if fast else 'pure-PyTorch slow_forward'})", flush=True)

    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        pass
    res = {
        "tool": "bench/GpuBench/peer.py", "ckpt": os.path.abspath(a.ckpt),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(a).items() if k != "prompt_rows"},
        "device": {"name": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "transformers": transformers.__version__, "cuda": torch.version.cuda, "driver": driver},
        "model": {"d_model": cfg.hidden_size, "n_layer": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
                  "d_state": cfg.state_size, "d_inner": cfg.intermediate_size, "d_conv": cfg.conv_kernel,
                  "params": sum(p.numel() for p in model.parameters()),
                  "use_mambapy": bool(getattr(cfg, "use_mambapy", False))},
        "fast_path_available": fast_available, "fast_path": fast,
        "precision": "bf16-autocast(fp32 weights)" if bf16 else "fp32",
        "decode": [], "train": [],
    }

    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, a.out)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000.0, r

    def cleanup():
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()

    def measure(entry, fn):
        """Runs fn() -> dict into entry; OOM and other errors are recorded, not raised."""
        try:
            entry.update(fn())
            entry["status"] = "ok"
        except torch.cuda.OutOfMemoryError:
            entry["status"] = "oom"
        except Exception as e:  # keep the other measurements
            entry["status"] = "error"
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        cleanup()
        save()
        print(f"  {entry}"[:300], flush=True)

    # ---- 1. decode (untouched weights) ----
    gen_kw = None  # extra generate kwargs this transformers version accepted (settled in the first warm-up)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:  # no EOS stop: every call must produce exactly N tokens
        gen_cfg.eos_token_id = None
        gen_cfg.pad_token_id = 0

    def generate(ids, n):
        nonlocal gen_kw
        mask = torch.ones_like(ids)
        base = dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=True)
        tries = [gen_kw] if gen_kw is not None else [dict(min_new_tokens=n, pad_token_id=0, eos_token_id=None),
                                         dict(pad_token_id=0, eos_token_id=None), dict(pad_token_id=0), {}]
        for i, extra in enumerate(tries):
            kw = dict(extra)
            if "min_new_tokens" in kw:
                kw["min_new_tokens"] = n
            try:
                with torch.no_grad(), autocast():
                    out = model.generate(**base, **kw)
                gen_kw = kw
                return out.sequences if hasattr(out, "sequences") else out
            except (TypeError, ValueError):
                if i == len(tries) - 1:
                    raise

    if not a.skip_decode:
        model.eval()
        max_b = max(a.decode_batches)
        if a.prompt_rows is not None:  # --prompt-len is then taken from the file
            prompts, source = torch.tensor(a.prompt_rows, dtype=torch.long), f"file:{a.prompt_file}"
        else:  # seeded CPU generator: the same prompts on every machine and run
            g = torch.Generator().manual_seed(a.seed)
            prompts = torch.randint(0, cfg.vocab_size, (max_b, a.prompt_len), generator=g)
            source = f"random(seed={a.seed})"
        res["prompt_source"], res["prompt_len"] = source, int(prompts.shape[1])
        res["prompts"] = prompts.tolist()
        n = a.decode_tokens
        for b in a.decode_batches:
            def run_decode(b=b):
                ids = prompts[:b].to(dev)
                plen = ids.shape[1]
                generate(ids, 8)  # warm-up (also settles which kwargs are accepted)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t1 = [timed(lambda: generate(ids, 1))[0] for _ in range(a.reps)]
                tn, outs = zip(*[timed(lambda: generate(ids, n)) for _ in range(a.reps)])
                seq = outs[-1]
                got = int(seq.shape[1] - plen)
                t1m, tnm = statistics.median(t1), statistics.median(tn)
                step = (tnm - t1m) / (n - 1)
                r = {"new_tokens": n, "generated_new_tokens": got,
                     "t_total_ms": tnm, "t_prefill_ms": t1m, "ms_per_step": step,
                     "tok_s_per_seq": 1000.0 / step if step > 0 else None,
                     "tok_s_total": b * 1000.0 / step if step > 0 else None,
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                     "t_total_ms_all": list(tn), "t_prefill_ms_all": t1,
                     "greedy_first_row": seq[0, plen:plen + 32].tolist(), "generate_kwargs": sorted(gen_kw or {})}
                if got != n:
                    r["warning"] = f"generate returned {got} new tokens, expected {n}"
                return r
            entry = {"batch": b}
            res["decode"].append(entry)
            measure(entry, run_decode)

    # ---- 2. training step (changes the weights; runs after decode) ----
    if not a.skip_train:
        model.train()
        for b in a.train_batch:
            def run_train(b=b):
                g = torch.Generator().manual_seed(a.seed + 1)
                ids = torch.randint(0, cfg.vocab_size, (b, a.seq_len), generator=g).to(dev)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                def step():
                    with autocast():
                        loss = model(input_ids=ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss.detach()
                for _ in range(2):  # warm-ups (also allocate the AdamW state)
                    step()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                times, losses = zip(*[timed(step) for _ in range(a.reps)])
                ms = statistics.median(times)
                return {"ms_median": ms, "ms_all": list(times), "tok_s": b * a.seq_len * 1000.0 / ms,
                        "peak_mb": torch.cuda.max_memory_allocated() / 2**20, "loss_last": float(losses[-1])}
            entry = {"batch": b, "seq_len": a.seq_len}
            res["train"].append(entry)
            measure(entry, run_train)

    save()
    # ---- Markdown summary ----
    def f(v, d=1):
        return "-" if v is None else (f"{v:,.{d}f}" if isinstance(v, float) else str(v))
    print(f"\n{res['device']['name']}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{res['precision']}, fast_path={fast}\n")
    if res["decode"]:
        print("| decode B | status | prefill ms | total ms (N=%d) | ms/step | tok/s/seq | tok/s total | peak MB |" % a.decode_tokens)
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for e in res["decode"]:
            print(f"| {e['batch']} | {e['status']} | {f(e.get('t_prefill_ms'), 2)} | {f(e.get('t_total_ms'), 1)} | "
                  f"{f(e.get('ms_per_step'), 3)} | {f(e.get('tok_s_per_seq'))} | {f(e.get('tok_s_total'))} | "
                  f"{f(e.get('peak_mb'), 0)} |")
        print()
    if res["train"]:
        print("| train B x L | status | ms/step | tokens/s | peak MB | loss |")
        print("|---|---|---:|---:|---:|---:|")
        for e in res["train"]:
            print(f"| {e['batch']} x {e['seq_len']} | {e['status']} | {f(e.get('ms_median'), 1)} | "
                  f"{f(e.get('tok_s'), 0)} | {f(e.get('peak_mb'), 0)} | {f(e.get('loss_last'), 3)} |")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
