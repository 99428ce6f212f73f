#!/usr/bin/env bash
# `make bench`: runs every benchmark, prints the figures and records them in
# BENCHMARKS.md, each in its own section (between `<!-- bench:NAME -->` and
# `<!-- /bench:NAME -->`), with the command, the machine and the date.
# Benchmarks are not tests: they assert nothing, they measure.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/env.sh)"

machine="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
today="$(date -u +%Y-%m-%d)"

# record NAME TITLE FILE: replace (or append) section NAME of BENCHMARKS.md with FILE's text.
record() {
    python3 - "$1" "$2" "$3" "$machine" "$today" <<'PY'
import pathlib, re, sys
name, title, body_file, machine, today = sys.argv[1:]
body = pathlib.Path(body_file).read_text().strip()
section = f"<!-- bench:{name} -->\n## {title}\n\nMachine: {machine}. Date: {today}.\n\n{body}\n<!-- /bench:{name} -->"
path = pathlib.Path("BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench` (scripts/bench.sh); figures are medians unless a column says otherwise.\n"
pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
path.write_text(text)
PY
}

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== rollout analysis: sample size and error rates" >&2
cargo run -q --release -p reco-rollout --example sample_size | tee "$out/analysis.md"
record analysis "Rollout analysis: impressions to decide, false rollbacks, power" "$out/analysis.md"

echo "== operator at scale" >&2
cargo build -q --release -p reco-operator --bins --examples
{
    echo 'Command: `cargo build --release -p reco-operator --bins --examples && target/release/examples/scale --pipelines 1000`'
    echo
    echo 'The release `reco-operator` binary runs as its own process against the in-process Kubernetes API test double;'
    echo 'converged means every pipeline has v1 stable, v2 in its first rollout step and all objects applied.'
    echo 'Median reconcile is interpolated from the operator'"'"'s `reco_operator_reconcile_duration_seconds` histogram.'
    echo 'Targets: converge in under 30 s, RSS under 100 MiB.'
    echo
    target/release/examples/scale --pipelines 1000
} | tee "$out/scale.md"
record operator-scale "Operator: 1,000 RecommenderPipelines with two ModelVersions each" "$out/scale.md"
echo "recorded in BENCHMARKS.md" >&2
