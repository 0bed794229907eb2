#!/usr/bin/env bash
# Builds ledgerd in release mode and packs a release bundle: a .tar.gz whose top level holds
# `ledgerd`, `migrations/` (the NNN_name.sql files) and `VERSION` (the Cargo version).
#
#   make-bundle.sh [--features F[,G]] OUT.tar.gz
#
# Offline and locked, like every build of the examples. CARGO (default: cargo on PATH, then
# ~/.cargo/bin/cargo), CARGO_TARGET_DIR and LEDGER_BUILD_ID are passed through to the build.
set -euo pipefail

PROG="${0##*/}"
CRATE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROG CRATE_DIR

usage() {
  cat <<EOF
Usage: $PROG [--features F[,G]] OUT.tar.gz

Builds ledgerd (cargo build --release --offline --locked) and writes the release bundle
OUT.tar.gz: ledgerd, migrations/ and VERSION at its top level.

Options:
  --features F   cargo features to build with, e.g. broken or flaky,panic
  -h, --help     print this help and exit
EOF
}

usage_error() {
  echo "$PROG: $1" >&2
  echo "Try '$PROG --help' for more information." >&2
  exit 2
}

features=""
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --features)
      [[ $# -ge 2 && -n "$2" ]] || usage_error "--features needs a value"
      features="$2"
      shift 2
      ;;
    --features=*)
      features="${1#*=}"
      [[ -n "$features" ]] || usage_error "--features needs a value"
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) usage_error "unknown option '$1'" ;;
    *)
      [[ -z "$out" ]] || usage_error "one output file only, got '$out' and '$1'"
      out="$1"
      shift
      ;;
  esac
done
[[ -n "$out" ]] || usage_error "missing OUT.tar.gz"
[[ "$out" == *.tar.gz ]] || usage_error "'$out': the bundle's name must end in .tar.gz"
[[ -d "$(dirname "$out")" ]] || usage_error "'$out': directory $(dirname "$out") does not exist"

cargo="${CARGO:-}"
if [[ -z "$cargo" ]]; then
  cargo="$(command -v cargo || true)"
  [[ -n "$cargo" ]] || cargo="$HOME/.cargo/bin/cargo"
fi
[[ -x "$cargo" ]] || { echo "$PROG: cargo not found: set CARGO or put cargo on PATH" >&2; exit 1; }

# Paths the caller gave are relative to where it stands, not to the crate the build runs in.
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
target_dir="${CARGO_TARGET_DIR:-$CRATE_DIR/target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"

build=("$cargo" build --release --offline --locked --manifest-path "$CRATE_DIR/Cargo.toml")
[[ -z "$features" ]] || build+=(--features "$features")
CARGO_TARGET_DIR="$target_dir" "${build[@]}"
binary="$target_dir/release/ledgerd"

# The version in Cargo.toml, cross-checked with what the binary says (`ledgerd 0.1.0`): a stale
# binary from another checkout must not be packed under this version.
version="$(awk -F'"' '/^\[/ { in_package = ($0 == "[package]") } in_package && /^version *=/ { print $2; exit }' \
  "$CRATE_DIR/Cargo.toml")"
[[ -n "$version" ]] || { echo "$PROG: no version in $CRATE_DIR/Cargo.toml" >&2; exit 1; }
reported="$("$binary" --version | head -n 1)"
if [[ "${reported##* }" != "$version" ]]; then
  echo "$PROG: $binary reports '$reported', but Cargo.toml says version $version" >&2
  exit 1
fi

staging="$(mktemp -d)"
partial="$out.partial"
trap 'rm -rf -- "$staging" "$partial"' EXIT
install -m 0755 "$binary" "$staging/ledgerd"
install -d -m 0755 "$staging/migrations"
shopt -s nullglob
migrations=("$CRATE_DIR"/migrations/*.sql)
[[ ${#migrations[@]} -gt 0 ]] || { echo "$PROG: no migrations in $CRATE_DIR/migrations" >&2; exit 1; }
install -m 0644 "${migrations[@]}" "$staging/migrations/"
printf '%s\n' "$version" >"$staging/VERSION"

# Sorted names, fixed owner and times, gzip without a timestamp: the same build packs to the
# same bytes. Written beside OUT and renamed, so OUT is never a partial archive.
epoch="${SOURCE_DATE_EPOCH:-0}"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -C "$staging" -cf - ledgerd migrations VERSION | gzip -n -9 >"$partial"
mv -f -- "$partial" "$out"
echo "$PROG: wrote $out (ledgerd $version${features:+, features $features})" >&2
