#!/bin/bash -eu
# Builds every cargo-fuzz target of qparity for ClusterFuzzLite (OSS-Fuzz's build environment:
# $SRC holds the checkout as $SRC/qparity, fuzzers and seed corpora go to $OUT).
#
# Each target fuzz/fuzz_targets/<t>.rs becomes $OUT/<t>, with $OUT/<t>_seed_corpus.zip holding
# the committed seeds (corpus/<t>/) and crash regressions (corpus/regressions/<t>/).
# `.clusterfuzzlite/verify-local.sh` runs this script without Docker.

cd "$SRC/qparity"

# Release build (-O); cargo-fuzz adds libFuzzer and AddressSanitizer.
cargo fuzz build -O

triple="${ARCHITECTURE:-x86_64}-unknown-linux-gnu"
bin_dir="fuzz/target/$triple/release"
targets=$(cargo fuzz list)
if [ -z "$targets" ]; then
  echo "build.sh: cargo fuzz list found no fuzz targets" >&2
  exit 1
fi

for t in $targets; do
  cp "$bin_dir/$t" "$OUT/$t"
  seeds=()
  for dir in "corpus/$t" "corpus/regressions/$t"; do
    if [ -d "$dir" ]; then
      while IFS= read -r -d '' f; do seeds+=("$f"); done < <(find "$dir" -type f -print0)
    fi
  done
  rm -f "$OUT/${t}_seed_corpus.zip"
  if [ "${#seeds[@]}" -gt 0 ]; then
    # -j: flat archive; files from both folders keep distinct names (seed-*, crash-*, ...).
    zip -j -q "$OUT/${t}_seed_corpus.zip" "${seeds[@]}"
  fi
  echo "build.sh: $t (${#seeds[@]} seed files)"
done
