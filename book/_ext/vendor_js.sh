#!/usr/bin/env bash
# Re-create book/_static/vendor/ (the charting JavaScript of the book's web explorers) from
# the npm registry: `npm pack` of pinned versions, then the minified builds and the
# licences are copied. The files are committed, so building or reading the book never
# needs the network; run this only to change a version (and update vendor/README.md).
set -euo pipefail

VEGA=5.33.0        # vega: the runtime that parses and draws a Vega spec (SVG)
VEGA_LITE=5.23.0   # vega-lite: compiles the explorers' short specs to Vega (needs vega ^5.24)

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/book/_static/vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" >/dev/null
mkdir -p vega vega-lite
tar -xzf "vega-$VEGA.tgz" -C vega --strip-components=1
tar -xzf "vega-lite-$VEGA_LITE.tgz" -C vega-lite --strip-components=1

mkdir -p "$out"
cp vega/build/vega.min.js "$out/vega.min.js"
cp vega/LICENSE "$out/LICENSE.vega"
cp vega-lite/build/vega-lite.min.js "$out/vega-lite.min.js"
cp vega-lite/LICENSE "$out/LICENSE.vega-lite"
# the source maps point at files we do not ship: drop the comment so browsers do not ask
sed -i 's|//# sourceMappingURL=.*$||' "$out/vega.min.js" "$out/vega-lite.min.js"
(cd "$out" && sha256sum vega.min.js vega-lite.min.js > SHA256SUMS)
echo "vendored vega $VEGA and vega-lite $VEGA_LITE into $out:"
ls -l "$out"
