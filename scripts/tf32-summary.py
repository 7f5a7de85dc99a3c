#!/usr/bin/env python3
"""The TF32 lines of a `dpgan bench kernels --json` report, for gpu-session.sh's summary.md: the
ceilings, then every TF32 case of the matmuls and the ResNet generator's convs with its rate and
its share of the tensor cores' mma.sync rate (issue 15's goal: at least 50%).

    python3 scripts/tf32-summary.py bench-kernels.json
"""
import json
import sys


def main(path):
    with open(path) as f:
        report = json.load(f)
    c = report["ceilings"]
    mma = c["mma_tf32_gflops"]
    if not report.get("complete", True):
        print(f"  - bench kernels was cut short: {len(report['cases'])} cases measured")
    print(
        f"  - ceilings: copy {c['copy_gbps']:.0f} GB/s; gemm {c['gemm_n']}³ f32 {c['gemm_f32_gflops']:.0f}, "
        f"tf32 {c['gemm_tf32_gflops']:.0f}, tf32 cp.async {c['gemm_tf32_cp_async_gflops']:.0f}, "
        f"tf32 wide {c['gemm_tf32_wide_gflops']:.0f} GFLOP/s; mma.sync tf32 {mma:.0f} GFLOP/s"
    )
    for case in report["cases"]:
        build, gflops = case.get("tf32_build"), case.get("gflops")
        if build is None or gflops is None:
            continue
        if not (case["name"].startswith("gemm tf32") or "resnet" in case["name"]):
            continue
        share = f", {100 * gflops / mma:.0f}% of mma.sync" if mma > 0 else ""
        print(f"  - {case['name']}: {gflops:.0f} GFLOP/s ({case['median_ms']:.4f} ms){share}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tf32-summary.py BENCH_KERNELS_JSON")
    main(sys.argv[1])
