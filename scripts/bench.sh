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
echo "== training on MovieLens-100K, 3 seeds" >&2
cargo build -q --release -p reco-cli
data="$(scripts/ensure-ml100k.sh)"
python3 - "$data" "$out" <<'PY' | tee "$out/training.md"
# Trains one model version per seed, one after the other, and reports the
# test-split quality (mean and spread over seeds), wall time, training
# throughput and peak memory (max RSS of the training process).
import json, os, pathlib, statistics, subprocess, sys, time
data, out = sys.argv[1], pathlib.Path(sys.argv[2])
seeds = [1, 2, 3]
runs = []
for seed in seeds:
    dest = out / f"seed{seed}"
    started = time.monotonic()
    child = subprocess.Popen(
        ["target/release/reco", "train", "--data", data, "--out", str(dest), "--seed", str(seed), "--quiet"],
        stdout=subprocess.DEVNULL,  # its own summary; the tables below are built from metrics.json
    )
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, in KiB
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"reco train --seed {seed} failed")
    metrics = json.loads((dest / "metrics.json").read_text())
    training = json.loads((dest / "training.json").read_text())
    runs.append((seed, wall, usage.ru_maxrss, metrics, training))
print("Command: `cargo build --release -p reco-cli && target/release/reco train --data \"$(scripts/ensure-ml100k.sh)\" --out DIR --seed N` for N = 1, 2, 3, one after the other.\n")
print(runs[0][3]["protocol"].capitalize() + ".\n")
print("| model | NDCG@10 (mean ± sd) | Recall@10 | NDCG@20 | Recall@20 | MAP@10 | coverage@10 |")
print("|---|---|---|---|---|---|---|")
for model in ["popularity", "item_to_item", "two_tower", "two_tower_ranker"]:
    def cell(key):
        values = [r[3]["models"][model][key] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {spread:.4f}"
    label = model + (" (served)" if model == "two_tower_ranker" else "")
    print(f"| {label} | " + " | ".join(cell(k) for k in ["ndcg@10", "recall@10", "ndcg@20", "recall@20", "map@10", "coverage@10"]) + " |")
print("\nPer seed, served model NDCG@10: " + ", ".join(f"seed {r[0]}: {r[3]['models']['two_tower_ranker']['ndcg@10']:.4f}" for r in runs) + ".\n")
print("| seed | wall time | two-tower examples/s (median epoch) | best epoch | peak RSS |")
print("|---|---|---|---|---|")
for seed, wall, peak, _, training in runs:
    rates = [e["examples_per_second"] for e in training["two_tower_epochs"]]
    print(f"| {seed} | {wall:.0f} s | {statistics.median(rates):,.0f} | {training['two_tower_best_epoch']} | {peak / 1024:.0f} MiB |")
PY
record training "Training: quality on MovieLens-100K (test split), time and memory" "$out/training.md"

echo "recorded in BENCHMARKS.md" >&2
