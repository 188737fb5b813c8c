#!/usr/bin/env bash
# kernels-emu's tests (kernels-cuda's CUDA kernels run on the CPU) under valgrind's memcheck: a
# kernel that reads or writes outside its buffers, or reads memory never written, fails the
# run. CI runs it after the tests (about 30 s).
#
#   scripts/emu-memcheck.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v valgrind >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq valgrind
    else
        echo "emu-memcheck: needs valgrind (sudo apt-get install valgrind)" >&2
        exit 1
    fi
fi
# The workspace's test build (what `cargo test --workspace` built; `-p kernels-emu` alone would
# unify features differently and rebuild the dependencies), kernels-emu's binaries from it.
bins=$(cargo test --workspace --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable")
            and m["manifest_path"].endswith("/kernels-emu/Cargo.toml")):
        print(m["executable"])')
[ -n "$bins" ] || { echo "emu-memcheck: no test binaries found" >&2; exit 1; }
for bin in $bins; do
    echo "memcheck: $(basename "$bin")"
    valgrind -q --error-exitcode=9 "$bin" -q
done
