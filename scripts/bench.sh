#!/usr/bin/env bash
# `make bench`: runs every benchmark, prints the figures and records them in
# BENCHMARKS.md, each in its own section (between `<!-- bench:NAME -->` and
# `<!-- /bench:NAME -->`), with the command, the machine and the date.
# Benchmarks are not tests: they assert nothing, they measure.
#
#     scripts/bench.sh                 # every section
#     scripts/bench.sh serving ann     # only these (analysis operator training serving ann)
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
sections="${*:-analysis operator training serving ann}"
want() { [[ " $sections " == *" $1 "* ]]; }

if want analysis; then
echo "== rollout analysis: sample size and error rates" >&2
cargo run -q --release -p reco-rollout --example sample_size | tee "$out/analysis.md"
record analysis "Rollout analysis: impressions to decide, false rollbacks, power" "$out/analysis.md"
fi

if want operator; then
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
fi
if want training; then
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
fi

if want serving; then
echo "== serving: reco standalone under load" >&2
cargo build -q --release -p reco-cli
models="$out/models"
mkdir -p "$models"
if [[ -d "$out/seed1" ]]; then
    ln -s "$out/seed1" "$models/v1"
else
    target/release/reco train --data ml-100k --out "$models/v1" --seed 1 --quiet >/dev/null
fi
port=18480
{
    echo 'Command: `target/release/reco standalone --models DIR --seed-data ml-100k --cache-ttl-seconds T` with DIR/v1 from'
    echo '`reco train --data ml-100k --seed 1`, driven by `target/release/reco loadgen` on the same machine (it takes CPU too).'
    echo 'Every request runs the whole funnel (features, user tower, ANN over qdrant-edge, item-to-item, popular, fresh,'
    echo 'ranker on ~250 candidates, MMR reranking, token) unless the recommendation cache answers it; users 1..943 round-robin,'
    echo 'page size 20. Bar: p99 <= 20 ms at >= 300 requests/s.'
    echo
    echo '| cache | loop | offered | throughput | p50 | p90 | p99 | errors | degraded |'
    echo '|---|---|---|---|---|---|---|---|---|'
    for ttl in 0 30; do
        rm -rf "$models/.state"
        target/release/reco standalone --models "$models" --seed-data ml-100k --http "127.0.0.1:$port" \
            --grpc "127.0.0.1:$((port + 1))" --cache-ttl-seconds "$ttl" >"$out/standalone.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
        cache=$([[ $ttl == 0 ]] && echo "off" || echo "${ttl} s TTL")
        for run in "closed --concurrency 8" "open --rate 300 --concurrency 64" "open --rate 400 --concurrency 64"; do
            target/release/reco loadgen --url "http://127.0.0.1:$port" --mode $run --duration 20 --warmup 3 \
                --json "$out/load.json" >/dev/null
            python3 - "$out/load.json" "$cache" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
offered = f"{r['target_rate']:.0f}/s" if r["target_rate"] else f"{r['concurrency']} workers"
print(f"| {sys.argv[2]} | {r['mode']} | {offered} | {r['throughput_rps']:.0f}/s | {r['p50_ms']:.2f} ms | {r['p90_ms']:.2f} ms | "
      f"{r['p99_ms']:.2f} ms | {r['errors']} | {r['degraded']} |")
PY
        done
        kill "$pid"; wait "$pid" || true
    done
} | tee "$out/serving.md"
record serving "Serving: /v1/recommend of reco standalone on MovieLens-100K" "$out/serving.md"
fi

if want ann; then
echo "== ANN: qdrant-edge against exact search, 1M x 64" >&2
cmd=(cargo run -q --release -p reco-vector-store --example ann_bench -- --items 1000000 --dim 64 --k 500 --queries 200)
{
    echo "Command: \`${cmd[*]}\`"
    echo
    echo 'Synthetic catalogue: a seeded Gaussian mixture of 1,000 Zipf-weighted clusters, L2-normalised, 20 genres; each'
    echo 'query excludes 200 random ids. Exact = multithreaded f32 dot-product scan in the same run. Bar: p99 <= 10 ms'
    echo 'with recall@100 >= 0.95 against exact.'
    echo
    "${cmd[@]}"
} | tee "$out/ann.md"
record ann "Retrieval: top 500 of 1M items, qdrant-edge HNSW against exact search" "$out/ann.md"
fi

echo "recorded in BENCHMARKS.md" >&2
