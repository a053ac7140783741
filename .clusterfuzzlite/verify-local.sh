#!/bin/bash -eu
# Runs .clusterfuzzlite/build.sh without Docker, in the environment OSS-Fuzz's base-builder
# image gives it ($SRC, $OUT, $WORK, clang with libFuzzer + AddressSanitizer flags), then runs
# every fuzzer it built over its seed corpus zip (`<fuzzer> -runs=0 <corpus>`): each must load
# and replay every seed without a crash.
#
#   .clusterfuzzlite/verify-local.sh [WORKDIR]
#
# WORKDIR (default: a new /tmp/cflite.XXXXXX) receives src/qparity (a copy of this checkout's
# tracked and unignored files, as the Dockerfile's COPY would take them), out/ and work/.
# CFLITE_FUZZ_SECONDS=N also fuzzes each target N seconds from its seeds.
#
# Needs clang, zip/unzip and cargo-fuzz on a nightly toolchain (the image has them). What this
# does not reproduce: the image itself (its clang, libc++ and cargo wrapper), and the GitHub
# workflows (.github/workflows/cflite_*.yml), which need Docker and a runner.

root=$(cd "$(dirname "$0")/.." && pwd)
base=${1:-$(mktemp -d /tmp/cflite.XXXXXX)}
mkdir -p "$base"
base=$(cd "$base" && pwd)

export SRC="$base/src" OUT="$base/out" WORK="$base/work"
mkdir -p "$SRC/qparity" "$OUT" "$WORK"
(cd "$root" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$SRC/qparity"

# The variables base-builder sets for a libFuzzer + ASan build.
export CC=clang CXX=clang++
export SANITIZER=address FUZZING_ENGINE=libfuzzer FUZZING_LANGUAGE=rust
export ARCHITECTURE=$(uname -m)
export LIB_FUZZING_ENGINE=-fsanitize=fuzzer
flags="-O1 -fno-omit-frame-pointer -gline-tables-only -fsanitize=address -fsanitize-address-use-after-scope -fsanitize=fuzzer-no-link"
export CFLAGS="$flags" CXXFLAGS="$flags"
# The image's default toolchain is nightly; here cargo-fuzz needs it asked for.
export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-nightly}

for tool in clang clang++ zip unzip; do
  command -v "$tool" > /dev/null || { echo "verify-local: $tool not found" >&2; exit 1; }
done

echo "verify-local: building in $SRC/qparity (out: $OUT)"
bash "$root/.clusterfuzzlite/build.sh"

failed=0
count=0
printf '%-20s %8s %8s  %s\n' fuzzer seeds status log
for bin in "$OUT"/*; do
  [ -f "$bin" ] && [ -x "$bin" ] || continue
  t=$(basename "$bin")
  count=$((count + 1))
  corpus="$WORK/corpus/$t"
  rm -rf "$corpus" && mkdir -p "$corpus"
  if [ -f "$OUT/${t}_seed_corpus.zip" ]; then
    unzip -q -o "$OUT/${t}_seed_corpus.zip" -d "$corpus"
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  log="$WORK/$t.log"
  status=ok
  if ! "$bin" -runs=0 "$corpus" > "$log" 2>&1; then
    status=FAILED
    failed=$((failed + 1))
  elif [ "${CFLITE_FUZZ_SECONDS:-0}" -gt 0 ]; then
    fuzz_dir="$WORK/fuzz/$t"
    mkdir -p "$fuzz_dir"
    if ! "$bin" -max_total_time="$CFLITE_FUZZ_SECONDS" -print_final_stats=1 \
        -artifact_prefix="$WORK/" "$fuzz_dir" "$corpus" >> "$log" 2>&1; then
      status=CRASHED
      failed=$((failed + 1))
    fi
  fi
  printf '%-20s %8s %8s  %s\n' "$t" "$seeds" "$status" "$log"
done

if [ "$count" -eq 0 ]; then
  echo "verify-local: build.sh put no fuzzer in $OUT" >&2
  exit 1
fi
if [ "$failed" -gt 0 ]; then
  echo "verify-local: $failed of $count fuzzers failed (see their logs)" >&2
  exit 1
fi
echo "verify-local: $count fuzzers built and replayed their seed corpora"
