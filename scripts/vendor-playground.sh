#!/usr/bin/env bash
# Refresh the playground's vendored browser libraries (gateway/web/vendor/) from the npm
# registry: the packages' own prebuilt browser files and their licences, nothing rebuilt.
# Usage: scripts/vendor-playground.sh   (needs node + npm; run it, review the diff, commit)
set -euo pipefail
MARKDOWN_IT=15.0.3
KATEX=0.19.1

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/gateway/web/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --silent \
    "markdown-it@$MARKDOWN_IT" "katex@$KATEX"
nm="$work/node_modules"

rm -rf "$vendor/markdown-it" "$vendor/katex"
mkdir -p "$vendor/markdown-it" "$vendor/katex/fonts"

# markdown-it's browser build bundles entities, linkify-it, mdurl, punycode.js and uc.micro.
cp "$nm/markdown-it/dist/browser/markdown-it.umd.min.js" "$vendor/markdown-it/"
cp "$nm/markdown-it/LICENSE" "$vendor/markdown-it/LICENSE"
cp "$nm/entities/LICENSE" "$vendor/markdown-it/LICENSE.entities"
cp "$nm/linkify-it/LICENSE" "$vendor/markdown-it/LICENSE.linkify-it"
cp "$nm/mdurl/LICENSE" "$vendor/markdown-it/LICENSE.mdurl"
cp "$nm/punycode.js/LICENSE-MIT.txt" "$vendor/markdown-it/LICENSE.punycode"
cp "$nm/uc.micro/LICENSE.txt" "$vendor/markdown-it/LICENSE.uc.micro"

# KaTeX: script, stylesheet and the woff2 fonts (every browser that runs the page reads
# woff2 and stops at the first format it can use, so the woff/ttf copies are left out).
cp "$nm/katex/dist/katex.min.js" "$nm/katex/dist/katex.min.css" "$vendor/katex/"
cp "$nm/katex/dist/fonts/"*.woff2 "$vendor/katex/fonts/"
cp "$nm/katex/LICENSE" "$vendor/katex/LICENSE"

{
    echo "# Vendored browser libraries"
    echo
    echo "Written by scripts/vendor-playground.sh from the npm registry; do not edit by hand."
    echo
    echo "| package | version | licence | files |"
    echo "| --- | --- | --- | --- |"
    for pkg in markdown-it entities linkify-it mdurl punycode.js uc.micro katex; do
        node -e '
            const p = require(process.argv[1] + "/package.json");
            const files = {
                "markdown-it": "markdown-it/markdown-it.umd.min.js",
                "katex": "katex/katex.min.js, katex.min.css, fonts/*.woff2",
            }[p.name] || "bundled in markdown-it.umd.min.js";
            console.log(`| ${p.name} | ${p.version} | ${p.license} | ${files} |`);
        ' "$nm/$pkg"
    done
    echo
    echo "Licences: markdown-it/LICENSE* and katex/LICENSE."
} > "$vendor/README.md"
echo "vendored into $vendor"
