#!/usr/bin/env bash
# Everything a GPU machine should measure, in one call that fits a short device session.
#
#   here:            ../shared/tools/gpu-bundle --data mnist,fashion-mnist && scripts/gpu-pack.sh
#   on the GPU:      bash scripts/gpu-session.sh tests bench      (one device run, carry [".gpu"])
#                    bash scripts/gpu-session.sh sanitize         (another)
#                    bash scripts/gpu-session.sh pytorch dpcgan   (another, carry [".gpu", ".whl"])
#                    bash scripts/gpu-session.sh gswgan nsys     (another)
#   dry run here:    DPGAN_SESSION_DEVICE=cpu bash scripts/gpu-session.sh --quick bench dpcgan gswgan
#   a device call:   DPGAN_SESSION_SECONDS=460 bash scripts/gpu-session.sh tests bench    (timeout_s 480)
#                    returns $OUT/summary.md and $OUT/session.tar.gz (every log and JSON)
#
# Parts (all of them when none is named), each step under its own time limit so that one slow step
# cannot eat the others' time; a device call may last 10 minutes, so split the parts as above:
#   tests   every test executable with DPGAN_REQUIRE_GPU=1, those with GPU tests first,  ≤ 240 s
#           each under its own limit (cut by DPGAN_SESSION_SECONDS like every step)
#   sanitize compute-sanitizer memcheck on the GEMM, conv, clip, DP-step, optimizer and   ≤ 570 s
#           norm test executables (the pointer-batch kernels among them), racecheck on the
#           conv tests' TF32 cases (shared-memory tiles) and the GEMM pipelines (cp.async, wide),
#           synccheck on the conv pipelines; each step stops at its first error
#   bench   `dpgan bench step` for DP-CGAN private and not, `dpgan bench kernels`, then     ≤ 570 s
#           `bench step` for GS-WGAN private and not, its warm start and phase 2 with TF32, the
#           warm start on the wide TF32 build, DPSGD-GAN's private D step
#   pytorch benches/pytorch/compare.py: the same steps in PyTorch (eager, Opacus, vmap,   ≤ 300 s
#           compile) beside ours; Opacus from .whl/ if the machine lacks it (device README)
#   dpcgan  DP-CGAN's full published run (24,900 steps) timed, sampled and evaluated;     ≤ 420 s
#           then its training again with --cuda-graph, timed
#   gswgan  warm-start throughput for groups of 1, 16, 64 and auto's, 16 with TF32;       ≤ 585 s
#           phase-2 iterations/s, eager and with --cuda-graph
#   nsys    an Nsight Systems trace of a short DP-CGAN run, if nsys is installed           ≤ 180 s
# Writes to $OUT (or .gpu/session): one log and JSON per step, and summary.md, a line per step.
# `--quick` shrinks every step to a smoke run (for checking this script, not for numbers).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A bundle packed by scripts/gpu-pack.sh travels as one archive: unpack it first.
if [ -f "$root/.gpu/bundle.tar.xz" ] && [ ! -d "$root/.gpu/bin" ]; then
  tar xJf "$root/.gpu/bundle.tar.xz" -C "$root/.gpu" || { echo "gpu-session: cannot unpack .gpu/bundle.tar.xz" >&2; exit 1; }
fi
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
parts=" ${*:-tests sanitize bench pytorch dpcgan gswgan nsys} "
want() { [[ $parts == *" $1 "* ]]; }
bin=${DPGAN_BIN:-$root/.gpu/bin/dpgan}
[ -x "$bin" ] || bin=$root/target/release/dpgan
# Every step writes into a work directory; what comes back from a device call is $OUT, of which
# the device tool returns at most 8 files. So after every step $OUT gets two: summary.md and
# session.tar.gz (every log, JSON and summary of the work directory, not the runs' tensors), and a
# call cut short by its time limit still returns all that finished.
results=${OUT:-}
out=${DPGAN_SESSION_WORK:-$root/.gpu/session}
mkdir -p "$out"
[ -n "$results" ] && mkdir -p "$results"
# DPGAN_SESSION_SECONDS: the call's time; steps are cut to end 20 s before it (packing the
# results), and skipped once it is spent.
deadline=
[ -n "${DPGAN_SESSION_SECONDS:-}" ] && deadline=$((SECONDS + DPGAN_SESSION_SECONDS - 20))
device=${DPGAN_SESSION_DEVICE:-cuda}
export DPGAN_DATA=${DPGAN_DATA:-$root/.gpu/data}
[ -d "$DPGAN_DATA/mnist" ] || DPGAN_DATA=$root/../shared/data
export DPGAN_GIT_COMMIT=${DPGAN_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
summary=$out/summary.md
echo "# dpgan GPU session ($parts) $(date -u +%Y-%m-%dT%H:%MZ) · commit $DPGAN_GIT_COMMIT · device $device" >"$summary"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$summary"

# Copies the summary and a tarball of the work directory's logs and JSON into $OUT (see above).
publish() {
  [ -n "$results" ] && [ "$results" != "$out" ] || return 0
  cp "$summary" "$results/summary.md.tmp" && mv "$results/summary.md.tmp" "$results/summary.md"
  tar czf "$results/session.tar.gz.tmp" -C "$out" --exclude='*.safetensors' --exclude='*.nsys-rep' --exclude='*.sqlite' --exclude='*ubyte*' --exclude='*.npy' \
    --exclude='./ws-*' --exclude='critics' --exclude='discriminators' --exclude='./nsys-run' . &&
    mv "$results/session.tar.gz.tmp" "$results/session.tar.gz"
}

# step NAME LIMIT_S COMMAND...: runs COMMAND under LIMIT_S seconds (less if the deadline is
# nearer), logs to $out/NAME.log, records the exit status and wall time in the summary, and
# publishes the results so far. Returns COMMAND's status, 124 if it timed out, 125 if skipped.
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "$deadline" ]; then
    local left=$((deadline - SECONDS))
    if [ $left -lt 5 ]; then
      echo "- $name: skipped, no time left" >>"$summary"
      publish
      return 125
    fi
    [ "$limit" -gt $left ] && limit=$left
  fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict=ok
  [ $rc -eq 124 ] && verdict="timed out after ${limit}s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && verdict="failed (exit $rc)"
  echo "- $name: $verdict in $((SECONDS - start)) s; last line: $(grep -v '^[[:space:]]*$' "$out/$name.log" | tail -n 1)" >>"$summary"
  # A refused capture does not fail a run (it falls back to eager steps), so it is said here:
  # its timings are then not those of replays.
  grep -m 1 'refused to capture' "$out/$name.log" | sed 's/^/  - CUDA GRAPH REFUSED, the run fell back to eager steps: /' >>"$summary"
  publish
  return $rc
}

if [ $quick -eq 1 ]; then
  dpcgan_steps=30 ws_iters=2 ws_groups="1 4" ws_auto_k=8 p2_iters=3 kernel_flags=(--quick) step_flags=(--steps 3 --warmup 1)
  eval_flags=(--eval-epochs 1) width_flags=(--base 4) gs_step_flags=(--base 4 --generator dcgan) dpsgd_flags=(--base 8)
else
  dpcgan_steps=24900 ws_iters=20 ws_groups="1 16 64" ws_auto_k=1000 p2_iters=200 kernel_flags=() step_flags=() eval_flags=() width_flags=() gs_step_flags=() dpsgd_flags=()
fi

# Tests: the executables with GPU tests first, kernels before models before the CLI (CI has run
# the CPU-only ones; they come last, if time is left). One test at a time: one illegal address
# poisons the context the executable's tests share, so the first failure is the one to read; a
# failing executable is run again with CUDA_LAUNCH_BLOCKING=1, whose errors name the launch.
gpu_tests="gemm conv clip elementwise reduce norm pool shape optim noise sanitize dp_step data models_gpu bench_step eval
  privacy_properties train_dpcgan train_dpsgd_gan train_gswgan cli"
cpu_tests="dpgan-lib dpgan-bin autograd checkpoint dpcgan dpsgd_gan gswgan metrics privacy sampling run_key report nvtx_injection cli_stop
  reproduce_dpcgan reproduce_dpsgd_gan reproduce_gswgan"
# On the CPU (a dry run of this script) the GPU tests skip themselves.
require_gpu=(DPGAN_REQUIRE_GPU=1)
[ "$device" = cpu ] && require_gpu=()
if want tests && [ -d "$root/.gpu/tests" ]; then
  passed=0 failed=() unfinished=()
  # The part's own 240 s, within the session's deadline: the benchmarks come next.
  session_deadline=$deadline
  deadline=$((SECONDS + 240))
  [ -n "$session_deadline" ] && [ "$session_deadline" -lt "$deadline" ] && deadline=$session_deadline
  for t in $gpu_tests $cpu_tests; do
    exe=$root/.gpu/tests/$t-test
    [[ $t == dpgan-* ]] && exe=$root/.gpu/tests/$t
    [ -x "$exe" ] || continue
    limit=60
    [[ " $cpu_tests " == *" $t "* ]] && limit=40
    step "test-$t" $limit env "${require_gpu[@]}" RUST_BACKTRACE=1 "$exe" --test-threads=1
    rc=$?
    if [ $rc -eq 0 ]; then
      passed=$((passed + 1))
    elif [ $rc -eq 124 ] || [ $rc -eq 125 ]; then
      unfinished+=("$t")
    else
      failed+=("$t")
      grep -E 'panicked|FAILED|failed' "$out/test-$t.log" | head -n 5 | sed 's/^/  - /' >>"$summary"
      step "test-$t-blocking" 90 env "${require_gpu[@]}" RUST_BACKTRACE=1 CUDA_LAUNCH_BLOCKING=1 "$exe" --test-threads=1
    fi
  done
  echo "- tests: $passed executables passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}," \
    "${#unfinished[@]} timed out or skipped${unfinished[*]:+ (${unfinished[*]})}" >>"$summary"
  deadline=$session_deadline
fi

# compute-sanitizer over the test executables whose kernels index memory the most freely.
if want sanitize && [ "$device" != cpu ]; then
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --version 2>&1 | tail -n 1 | sed 's/^/- compute-sanitizer: /' >>"$summary"
    for t in gemm conv clip dp_step optim norm; do
      exe=$root/.gpu/tests/$t-test
      [ -x "$exe" ] && step "memcheck-$t" 60 env DPGAN_REQUIRE_GPU=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
        "$exe" --test-threads=1
    done
    [ -x "$root/.gpu/tests/conv-test" ] && step racecheck-conv-tf32 90 env DPGAN_REQUIRE_GPU=1 compute-sanitizer --tool racecheck \
      --error-exitcode 3 "$root/.gpu/tests/conv-test" --test-threads=1 tf32
    # The cp.async and wide builds' pipelines: shared-memory races and barriers that a real warp
    # schedule could expose and the host emulation cannot.
    [ -x "$root/.gpu/tests/gemm-test" ] && step racecheck-gemm-pipelines 60 env DPGAN_REQUIRE_GPU=1 compute-sanitizer --tool racecheck \
      --error-exitcode 3 "$root/.gpu/tests/gemm-test" --test-threads=1 pipelines
    [ -x "$root/.gpu/tests/conv-test" ] && step synccheck-conv-pipelines 60 env DPGAN_REQUIRE_GPU=1 compute-sanitizer --tool synccheck \
      --error-exitcode 3 "$root/.gpu/tests/conv-test" --test-threads=1 pipelines
  else
    echo "- sanitize: no compute-sanitizer on this machine" >>"$summary"
  fi
fi

# Benchmarks.
# bench_steps ALGO: its private and non-private step, each replayed from CUDA graphs beside the
# eager step (DP-CGAN's steps and GS-WGAN's phase 2 as training steps, per-step values from a step
# block; the warm start its launch floor).
bench_steps() {
  local algo=$1 mode extra
  for mode in --private --non-private; do
    extra=()
    [ "$algo" = gs-wgan ] && extra=("${gs_step_flags[@]}")
    [ "$device" != cpu ] && extra+=(--cuda-graph)
    step "bench-step-$algo${mode#-}" 45 "$bin" bench step --algo "$algo" "$mode" --phases --device "$device" \
      "${step_flags[@]}" "${extra[@]}" --json "$out/bench-step-$algo${mode#-}.json"
  done
}
# DP-CGAN's steps first, the headline figures (a few seconds each), then the kernels (minutes).
if want bench; then
  bench_steps dp-cgan
  [ "$device" != cpu ] && step bench-kernels 210 "$bin" bench kernels "${kernel_flags[@]}" --json "$out/bench-kernels.json"
  # The figures issue 15 asks about, into the summary: the ceilings, and each TF32 build of the
  # matmuls and the ResNet convs against the tensor cores' mma.sync rate.
  [ -f "$out/bench-kernels.json" ] && python3 scripts/tf32-summary.py "$out/bench-kernels.json" >>"$summary"
  bench_steps gs-wgan
  # GS-WGAN's warm-start iteration and phase 2 again with TF32 allowed, beside the f32 ones above.
  [ "$device" != cpu ] && step bench-step-gs-wgan-non-private-tf32 45 "$bin" bench step --algo gs-wgan --non-private --tf32 \
    --phases --device "$device" "${step_flags[@]}" "${gs_step_flags[@]}" --json "$out/bench-step-gs-wgan-non-private-tf32.json"
  [ "$device" != cpu ] && step bench-step-gs-wgan-private-tf32 45 "$bin" bench step --algo gs-wgan --private --tf32 \
    --cuda-graph --device "$device" "${step_flags[@]}" "${gs_step_flags[@]}" --json "$out/bench-step-gs-wgan-private-tf32.json"
  # The warm-start iteration once more on the wide TF32 build (128 × 128 tiles where they fill).
  [ "$device" != cpu ] && step bench-step-gs-wgan-non-private-tf32-wide 45 "$bin" --tf32-build wide bench step --algo gs-wgan \
    --non-private --tf32 --phases --device "$device" "${step_flags[@]}" "${gs_step_flags[@]}" \
    --json "$out/bench-step-gs-wgan-non-private-tf32-wide.json"
  # DPSGD-GAN's private D step at the published B = 128, d = 128 (it has no non-private step), with
  # its launch floor.
  graph=()
  [ "$device" != cpu ] && graph=(--cuda-graph)
  step bench-step-dpsgd-gan-private 45 "$bin" bench step --algo dpsgd-gan --private --phases --device "$device" \
    "${step_flags[@]}" "${dpsgd_flags[@]}" "${graph[@]}" --json "$out/bench-step-dpsgd-gan-private.json"
fi

# PyTorch beside dpgan on the same device, same settings.
if want pytorch; then
  if ls "$root"/.whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl &&
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ $quick -eq 1 ]; then
    compare_flags=(--steps 2 --warmup 1 --batch-size 64 --only dp-cgan)
  else
    compare_flags=(--steps 200 --warmup 20)
  fi
  step pytorch-compare 300 python3 benches/pytorch/compare.py --device "$device" --dpgan "$bin" "${compare_flags[@]}" \
    --json "$out/pytorch-compare.json"
fi

# DP-CGAN's published run, timed, then sampled and evaluated (logistic regression and the MLP).
if want dpcgan; then
  step dpcgan-reproduce 300 "$bin" reproduce dp-cgan --data mnist --out "$out/dpcgan" --runs 1 --seed 1 \
    --steps "$dpcgan_steps" --device "$device" "${eval_flags[@]}"
  cp "$out/dpcgan/results.json" "$out/dpcgan-results.json" 2>/dev/null
  # The same training with its steps replayed from one CUDA graph (padded Poisson batches):
  # timed only; its final report's steps/s beside the eager run's.
  if [ "$device" != cpu ]; then
    rm -rf "$out/dpcgan-graph"
    step dpcgan-train-cuda-graph 120 "$bin" train dp-cgan --data mnist --out "$out/dpcgan-graph" --seed 1 \
      --steps "$dpcgan_steps" --device "$device" --cuda-graph
  fi
fi

# Warm-start throughput: G discriminators as one group, ws_iters iterations each.
want gswgan || ws_groups=""
finished=""
for g in $ws_groups; do
  rm -rf "$out/ws-$g"
  step "warm-start-g$g" 75 "$bin" train gs-wgan warm-start --data mnist --out "$out/ws-$g" --discriminators "$g" \
    --group-size "$g" --iterations "$ws_iters" --seed 1 --device "$device" "${width_flags[@]}" && finished="$g $finished"
  wall=$(grep -o 'in [0-9.]* s' "$out/warm-start-g$g.log" | head -n 1 | tr -dc '0-9.')
  [ -n "$wall" ] && python3 -c "print(f'  - G = $g: {$g * $ws_iters / $wall:.1f} discriminator-iterations/s ($ws_iters iterations, {$wall} s with setup and saving)')" >>"$summary"
done

# The middle group size again with TF32 allowed (`--tf32`), beside its f32 pace.
if want gswgan && [ "$device" != cpu ]; then
  g=$(echo $ws_groups | awk '{print $2}')
  rm -rf "$out/ws-$g-tf32"
  step "warm-start-g$g-tf32" 75 "$bin" train gs-wgan warm-start --data mnist --out "$out/ws-$g-tf32" --discriminators "$g" \
    --group-size "$g" --iterations "$ws_iters" --seed 1 --device "$device" --tf32 "${width_flags[@]}"
  wall=$(grep -o 'in [0-9.]* s' "$out/warm-start-g$g-tf32.log" | head -n 1 | tr -dc '0-9.')
  [ -n "$wall" ] && python3 -c "print(f'  - G = $g, TF32: {$g * $ws_iters / $wall:.1f} discriminator-iterations/s ($ws_iters iterations, {$wall} s with setup and saving)')" >>"$summary"
  rm -rf "$out/ws-$g-tf32"
fi

# The group size `--group-size auto` measures for the published K = 1000 (one iteration each: the
# probe, then one pass over all groups), and its pace.
if want gswgan; then
  rm -rf "$out/ws-auto"
  step warm-start-auto 90 "$bin" train gs-wgan warm-start --data mnist --out "$out/ws-auto" --discriminators "$ws_auto_k" \
    --group-size auto --iterations 1 --seed 1 --device "$device" "${width_flags[@]}"
  grep -o 'groups of up to .*' "$out/warm-start-auto.log" | head -n 1 | sed 's/^/  - auto: /' >>"$summary"
  grep -o '[0-9.]* discriminator-iterations/s.*' "$out/warm-start-auto.log" | tail -n 1 | sed 's/^/  - auto pace: /' >>"$summary"
  rm -rf "$out/ws-auto"
fi

# Phase 2 from the largest warm start that finished.
for g in $(echo "$finished" | tr ' ' '\n' | sort -rn); do
  if [ -n "$g" ]; then
    rm -rf "$out/phase2"
    step phase2 120 "$bin" train gs-wgan --warm-start "$out/ws-$g" --out "$out/phase2" --iterations "$p2_iters" \
      --generator resnet --seed 1 --device "$device" --log-every 50 --checkpoint-every 1000000
    tail -n 1 "$out/phase2/metrics.jsonl" >"$out/phase2-last-metrics.json" 2>/dev/null
    # The same iterations on a working critic replayed from CUDA graphs, timed beside.
    if [ "$device" != cpu ]; then
      rm -rf "$out/phase2-graph"
      step phase2-cuda-graph 90 "$bin" train gs-wgan --warm-start "$out/ws-$g" --out "$out/phase2-graph" --iterations "$p2_iters" \
        --generator resnet --seed 1 --device "$device" --log-every 50 --checkpoint-every 1000000 --cuda-graph
      tail -n 1 "$out/phase2-graph/metrics.jsonl" >"$out/phase2-graph-last-metrics.json" 2>/dev/null
    fi
    break
  fi
done

# Nsight Systems: NVTX phases and kernel names of a short DP-CGAN run.
if want nsys && command -v nsys >/dev/null && [ "$device" != cpu ]; then
  step nsys 120 nsys profile --trace=cuda,nvtx --force-overwrite true -o "$out/dpcgan-trace" \
    "$bin" train dp-cgan --data mnist --out "$out/nsys-run" --steps 200 --device "$device" --seed 1
  step nsys-stats 60 nsys stats --report nvtx_sum,cuda_gpu_kern_sum --format csv -o "$out/dpcgan-trace" "$out/dpcgan-trace.nsys-rep"
  rm -f "$out/dpcgan-trace.sqlite"
fi
rm -rf "$out/ws-"* "$out/phase2/critics" "$out/nsys-run"
publish
cat "$summary"
