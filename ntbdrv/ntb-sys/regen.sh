#!/usr/bin/env bash
# Regenerate the vendored src/bindings.rs of ntb-sys.
#
# Runs the build script with feature `regenerate` (bindgen over include/wrapper.h with the options
# in `regen::builder` in build.rs; needs libclang, e.g. Debian's libclang-dev, and rustfmt) and
# copies its $OUT_DIR/bindings.rs over src/bindings.rs. Afterwards
# `cargo test -p ntb-sys --features regenerate` passes by construction; commit the new file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

out_dir="$(
    cargo build --manifest-path "$here/Cargo.toml" -p ntb-sys --features regenerate \
        --message-format=json-render-diagnostics |
        grep '"reason":"build-script-executed"' |
        grep '"package_id":"[^"]*ntb-sys' |
        sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' |
        tail -n 1
)"
if [[ -z "$out_dir" || ! -f "$out_dir/bindings.rs" ]]; then
    echo "regen.sh: no bindings.rs from the ntb-sys build script (out_dir='$out_dir')" >&2
    exit 1
fi
cp "$out_dir/bindings.rs" "$here/src/bindings.rs"
echo "regen.sh: wrote $here/src/bindings.rs from $out_dir/bindings.rs"
