"""Runs `dpgan bench step` and the PyTorch step benchmarks on one device, with one batch size and
one number of steps, and prints their times side by side with the ratio PyTorch / dpgan (above 1:
dpgan is faster). Every report's parameter counts must equal docs/algorithms.md's, or the comparison stops.

    python benches/pytorch/compare.py --device cuda --steps 200 --warmup 20
    python benches/pytorch/compare.py --device cpu --steps 3 --warmup 1 --batch-size 64 --only dp-cgan
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (row name, algo, mode, dpgan's arguments or None, the PyTorch script and its arguments or None)
ROWS = [
    ("dp-cgan non-private", "dp-cgan", "non-private", ["--non-private"], None),
    ("  pytorch eager", "dp-cgan", "non-private", None, ["dpcgan_step.py", "--variant", "eager"]),
    ("  pytorch compile", "dp-cgan", "non-private", None, ["dpcgan_step.py", "--variant", "compile", "--non-private"]),
    ("dp-cgan private", "dp-cgan", "private", ["--private"], None),
    ("  pytorch opacus", "dp-cgan", "private", None, ["dpcgan_step.py", "--variant", "opacus"]),
    ("  pytorch vmap", "dp-cgan", "private", None, ["dpcgan_step.py", "--variant", "vmap"]),
    ("  pytorch compile", "dp-cgan", "private", None, ["dpcgan_step.py", "--variant", "compile", "--private"]),
    ("gs-wgan private", "gs-wgan", "private", ["--private"], None),
    ("  pytorch eager", "gs-wgan", "private", None, ["gswgan_step.py"]),
]

SPEC_COUNTS = {
    "dp-cgan": (common.DPCGAN_G_PARAMS, common.DPCGAN_D_PARAMS),
    "gs-wgan": (None, common.GSWGAN_D_PARAMS),
}


def dpgan_binary(flag):
    for candidate in (flag, os.environ.get("DPGAN_BIN"), shutil.which("dpgan")):
        if candidate:
            return candidate
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "dpgan")


def run_json(cmd):
    """The report a command prints with --json -, or the reason it has none."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["exit status %d" % out.returncode])[-1]
        return None, last
    return json.loads(out.stdout), None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (the same for both)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="default: each algorithm's published one (600, 32)")
    p.add_argument("--generator", choices=["resnet", "dcgan"], default="resnet", help="gs-wgan's generator")
    p.add_argument("--base", type=int, default=64, help="gs-wgan's width (64 is the published model)")
    p.add_argument("--only", choices=["dp-cgan", "gs-wgan"], help="one algorithm's rows only")
    p.add_argument("--dpgan", help="the dpgan binary [default: $DPGAN_BIN, dpgan on PATH, target/release/dpgan]")
    p.add_argument("--json", metavar="PATH", help="also write every report and ratio to PATH")
    args = p.parse_args()
    binary = dpgan_binary(args.dpgan)
    if not os.path.isfile(binary):
        sys.exit(f"error: no dpgan binary at {binary}: build it (cargo build --release --bin dpgan) or pass --dpgan")

    common_args = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", "-"]
    if args.batch_size:
        common_args += ["--batch-size", str(args.batch_size)]
    gs_args = ["--generator", args.generator, "--base", str(args.base)]
    results, ours = [], {}
    for name, algo, mode, dpgan_args, script in ROWS:
        if args.only and algo != args.only:
            continue
        extra = gs_args if algo == "gs-wgan" else []
        if dpgan_args is not None:
            cmd = [binary, "bench", "step", "--algo", algo, *dpgan_args, *common_args, *extra]
        else:
            cmd = [sys.executable, os.path.join(HERE, script[0]), *script[1:], *common_args, *extra]
        print(f"running: {' '.join(cmd)}", file=sys.stderr)
        report, why = run_json(cmd)
        if report is not None:
            want_g, want_d = SPEC_COUNTS[algo]
            if algo == "gs-wgan":
                want_g = common.GSWGAN_G_PARAMS[args.generator] if args.base == 64 else None
                want_d = want_d if args.base == 64 else None
            for field, want in (("generator_params", want_g), ("discriminator_params", want_d)):
                assert want is None or report[field] == want, f"{name}: {field} {report[field]} != docs/algorithms.md's {want}"
            if dpgan_args is not None:
                ours[(algo, mode)] = report
            else:
                base = ours.get((algo, mode))
                if base is not None:
                    assert (report["generator_params"], report["discriminator_params"]) == (
                        base["generator_params"],
                        base["discriminator_params"],
                    ), f"{name}: parameter counts differ from dpgan's"
                    assert report["settings"]["batch_size"] == base["settings"]["batch_size"], f"{name}: another batch size"
        results.append((name, algo, mode, dpgan_args is not None, report, why))

    device = next((r["device_name"] for *_, r, _ in results if r), args.device)
    print(f"device: {args.device} ({device}); {args.steps} timed steps after {args.warmup} warm-up steps")
    header = f"{'step':24} {'median ms':>10} {'mean ms':>10} {'steps/s':>9} {'peak MiB':>9} {'vs dpgan':>9}"
    print(header)
    print("-" * len(header))
    table = []
    for name, algo, mode, is_ours, report, why in results:
        if report is None:
            print(f"{name:24} failed: {why}")
            table.append({"row": name.strip(), "algo": algo, "mode": mode, "error": why})
            continue
        base = ours.get((algo, mode))
        ratio = None if is_ours or base is None else report["median_ms"] / base["median_ms"]
        peak = report.get("peak_device_memory_bytes")
        print(
            f"{name:24} {report['median_ms']:10.3f} {report['mean_ms']:10.3f} {report['steps_per_s']:9.2f} "
            f"{(f'{peak / 1048576:.1f}' if peak else '-'):>9} {(f'{ratio:.2f}x' if ratio else ''):>9}"
        )
        table.append({"row": name.strip(), "algo": algo, "mode": mode, "report": report, "pytorch_over_dpgan": ratio})
    print("vs dpgan: PyTorch's median ms per step over dpgan's for the same step (above 1: dpgan is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
