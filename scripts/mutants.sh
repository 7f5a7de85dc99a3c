#!/usr/bin/env bash
# Mutation testing of the privacy-critical code with cargo-mutants: each mutant (a `<` turned into
# `<=`, a function body replaced by `Ok(vec![])`, a `+=` into `-=`, ...) is built and the tests
# that exercise its file are run; a mutant the tests do not catch marks behaviour no test pins
# down. Not part of CI: it is slow.
#
#   scripts/mutants.sh                         every privacy-critical file (the list below)
#   scripts/mutants.sh src/train/replay.rs     one file (or several)
#   MUTANTS_ARGS="--in-place --baseline skip --timeout 120" scripts/mutants.sh src/dp/key.rs
#                                              extra cargo-mutants options: here, mutate the tree
#                                              itself instead of a copy (only in a tree nobody edits
#                                              meanwhile), trust that the tests pass unmutated and
#                                              give each mutant's tests 120 s
#
# How long: a mutant costs an incremental build of the crate and the tests of its file; a caught
# mutant stops at the first failing test, a surviving one runs them all (up to a minute where the
# end-to-end training tests are among them), one that loops forever runs to the timeout. Measured
# on a 2-core machine shared with other builds: 35-80 s a mutant, 17-23 minutes for each of
# replay.rs, key.rs and step.rs (16-28 mutants); the whole list, about 960 mutants, 12-20 hours.
# Each file run also starts with the baseline: a build of the crate (about 5 minutes in the fresh
# copy cargo-mutants makes; seconds `--in-place` in a tree already built) and one run of its tests.
#
# Two passes make the slow files affordable: first only the fast test targets, then the full list
# on what survived (`--iterate` skips the mutants an earlier pass into the same output caught):
#   MUTANTS_TESTS="privacy privacy_properties" MUTANTS_ARGS="--in-place" scripts/mutants.sh src/privacy/rdp.rs
#   MUTANTS_ARGS="--in-place --iterate" scripts/mutants.sh src/privacy/rdp.rs
# MUTANTS_TESTS replaces the file's test targets (the unit tests always run). MUTANTS_ARGS is split
# on spaces and its quotes stay literal: write a regex without quotes or spaces
# (`-F calibrate|iterate`, not `-F 'calibrate|iterate'`, whose first and last names never match).
#
# Needs cargo-mutants (`cargo install cargo-mutants --locked`; 27.1.0 is what RESULTS.md quotes)
# and cargo-nextest, which runs a test per process and stops at the first failure. Results go to
# mutants.out-runs/<file>/mutants.out/ (gitignored): missed.txt lists the survivors, caught.txt,
# timeout.txt and unviable.txt the rest, outcomes.json all of it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DPGAN_DATA=${DPGAN_DATA:-$(cd .. && pwd)/shared/data}

all_files=(
  src/train/replay.rs src/dp/key.rs src/dp/step.rs src/data/sampling.rs src/dp/sanitize.rs src/dp/clip.rs
  src/train/dpcgan/mod.rs src/privacy/accountant.rs src/privacy/calibrate.rs src/dp/noise.rs
  src/privacy/rdp.rs src/privacy/conversion.rs src/privacy/gswgan.rs src/privacy/special.rs
  src/train/gswgan/mod.rs src/train/gswgan/private.rs src/train/gswgan/run.rs src/train/dpsgd_gan/mod.rs
  src/train/dp_sgd_run.rs src/dp/finite.rs src/dp/audit.rs
)

# The test targets that exercise a file (besides the unit tests in src/, always run): running only
# these keeps a surviving mutant from paying for the whole suite.
tests_for() {
  case "$1" in
    src/train/replay.rs) echo "privacy_properties dpcgan gswgan train_dpcgan train_gswgan run_key" ;;
    src/dp/key.rs) echo "noise gswgan run_key train_dpcgan train_gswgan" ;;
    src/dp/step.rs) echo "dp_step dpcgan bench_step" ;;
    src/dp/clip.rs) echo "clip dp_step dpcgan gswgan" ;;
    src/dp/noise.rs) echo "noise sanitize dp_step dpcgan gswgan" ;;
    src/dp/sanitize.rs) echo "sanitize gswgan" ;;
    src/dp/finite.rs) echo "dp_step dpcgan gswgan train_dpcgan train_gswgan train_dpsgd_gan" ;;
    src/dp/audit.rs) echo "privacy_properties" ;;
    src/data/sampling.rs) echo "sampling privacy_properties gswgan train_dpcgan train_gswgan" ;;
    src/train/dpcgan/*) echo "privacy_properties dpcgan train_dpcgan run_key bench_step reproduce_dpcgan" ;;
    src/train/dpsgd_gan/*) echo "privacy_properties dpsgd_gan train_dpsgd_gan run_key bench_step reproduce_dpsgd_gan" ;;
    src/train/dp_sgd_run.rs) echo "privacy_properties train_dpcgan train_dpsgd_gan run_key cli_stop" ;;
    src/train/gswgan/*) echo "privacy_properties gswgan train_gswgan run_key bench_step reproduce_gswgan cli_stop" ;;
    src/privacy/*) echo "privacy privacy_properties cli train_dpcgan train_gswgan reproduce_dpcgan reproduce_gswgan" ;;
    *) echo "unknown file $1: add its test targets to scripts/mutants.sh" >&2; return 1 ;;
  esac
}

command -v cargo-mutants >/dev/null || { echo "mutants: cargo-mutants is not installed (cargo install cargo-mutants --locked)" >&2; exit 1; }
command -v cargo-nextest >/dev/null || { echo "mutants: cargo-nextest is not installed (cargo install cargo-nextest --locked)" >&2; exit 1; }

files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${all_files[@]}")
for file in "${files[@]}"; do
  [ -f "$file" ] || { echo "mutants: no file $file" >&2; exit 1; }
  selection=(--lib)
  for t in ${MUTANTS_TESTS:-$(tests_for "$file")}; do selection+=(--test "$t"); done
  out="mutants.out-runs/${file//\//-}"
  mkdir -p "$out"
  echo "mutants: $file ($(cargo mutants --list --file "$file" | wc -l) mutants; tests: ${selection[*]})"
  # One mutant at a time (cargo-mutants' default; each build is parallel inside, and `--jobs`
  # cannot go with `--in-place`). The test timeout is three
  # times the baseline's (a mutant that loops forever costs that much), at least 60 s. No status
  # check: a file with survivors is a result, not a failure of the script. No `--cap-lints`: the
  # crate denies no warnings, and the flag would change RUSTFLAGS and rebuild every dependency.
  # A `--timeout` in MUTANTS_ARGS (needed with `--baseline skip`) replaces the multiplier.
  case " ${MUTANTS_ARGS:-} " in
    *" --timeout "* | *" --timeout="* | *" -t "*) timeout=() ;;
    *) timeout=(--timeout-multiplier 3 --minimum-test-timeout 60) ;;
  esac
  # shellcheck disable=SC2086 # MUTANTS_ARGS is a list of options
  cargo mutants --file "$file" --output "$out" --test-tool nextest "${timeout[@]}" \
    ${MUTANTS_ARGS:-} -- "${selection[@]}" || true
  for kind in missed timeout unviable; do
    if [ -s "$out/mutants.out/$kind.txt" ]; then
      echo "mutants: $kind in $file:"
      sed 's/^/  /' "$out/mutants.out/$kind.txt"
    fi
  done
done
