"""What the PyTorch step benchmarks share: the command line, the timing loop, the report (the same
fields as `dpgan bench step --json`) and docs/algorithms.md's parameter counts, asserted on every run."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# docs/algorithms.md §1 and §2 (and §3's list): a model that does not match is not the model being compared.
DPCGAN_G_PARAMS = 115_344
DPCGAN_D_PARAMS = 101_889
GSWGAN_D_PARAMS = 1_071_105
GSWGAN_G_PARAMS = {"resnet": 3_826_177, "dcgan": 1_114_305}


def count_params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def assert_params(name, module, expected):
    got = count_params(module)
    if got != expected:
        sys.exit(f"error: {name} has {got:,} trainable parameters; docs/algorithms.md says {expected:,}")
    return got


def parser(description, default_batch):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (and torch.compile's compilation)")
    p.add_argument("--batch-size", type=int, default=default_batch)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH, or only JSON to stdout with -")
    return p


def check_args(args):
    if args.steps < 1:
        sys.exit("error: --steps must be at least 1")
    if args.batch_size < 1:
        sys.exit("error: --batch-size must be at least 1")
    if args.warmup < 0:
        sys.exit("error: --warmup must be at least 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}: this PyTorch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"error: --device must be cpu, cuda or cuda:N, got {args.device}")
    return device


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device, steps, step):
    """Per-step milliseconds and the pass's wall seconds, as `dpgan bench step` measures them: CUDA
    events between steps, recorded without synchronising, and one synchronisation at the end; on
    the CPU the wall clock around each step."""
    synchronize(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        start = time.perf_counter()
        events[0].record()
        for i in range(steps):
            step()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        samples = [events[i].elapsed_time(events[i + 1]) for i in range(steps)]
    else:
        samples = []
        start = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - start
    return samples, wall


def git_commit():
    if os.environ.get("DPGAN_GIT_COMMIT"):
        return os.environ["DPGAN_GIT_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} hardware threads, torch uses {torch.get_num_threads()})"


def run(args, device, *, algo, mode, implementation, step_text, inputs, settings, g, d, step):
    """Warm-up, the timed pass, the report: printed as text, or as JSON with --json -."""
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples, wall = time_steps(device, args.steps, step)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_note = "torch.cuda.max_memory_allocated during the timed steps (the caching allocator's tensors)"
    else:
        peak, peak_note = None, "not measured on the CPU"
    timing = (
        f"{args.warmup} untimed warm-up steps, then {args.steps} steps each "
        + (
            "between two CUDA events, recorded without synchronising; steps/s = steps / the pass's wall time to a final synchronisation"
            if device.type == "cuda"
            else "timed with the wall clock; steps/s = steps / the pass's wall time"
        )
    )
    settings = dict(settings, steps=args.steps, warmup=args.warmup, seed=args.seed, torch=torch.__version__)
    report = {
        "benchmark": "step",
        "implementation": implementation,
        "algo": algo,
        "mode": mode,
        "step": step_text,
        "inputs": inputs,
        "device": str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "settings": settings,
        "generator_params": g,
        "discriminator_params": d,
        "steps_per_s": args.steps / wall,
        "mean_ms": statistics.fmean(samples),
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "timing": timing,
        "peak_device_memory_bytes": peak,
        "peak_memory_note": peak_note,
        "phases": None,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
        return report
    if args.json:
        tmp = f"{args.json}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.json)
    print(f"{implementation} {algo} {mode} step on {report['device']} ({report['device_name']})")
    print(f"step: {step_text}")
    print(f"parameters: G {g}, D {d}")
    print(
        f"{report['steps_per_s']:.2f} steps/s; ms per step: mean {report['mean_ms']:.3f}, "
        f"median {report['median_ms']:.3f}, min {report['min_ms']:.3f}, max {report['max_ms']:.3f}"
    )
    if peak is not None:
        print(f"peak device memory: {peak / 1048576:.1f} MiB")
    return report
