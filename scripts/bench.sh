#!/usr/bin/env bash
# `make bench`: runs every benchmark, prints the figures and records them in
# BENCHMARKS.md, each in its own section (between `<!-- bench:NAME -->` and
# `<!-- /bench:NAME -->`), with the command, the machine and the date.
# Benchmarks are not tests: they assert nothing, they measure.
#
#     scripts/bench.sh                 # every section
#     scripts/bench.sh serving ann     # only these (analysis operator training serving ann features incremental drift demo pods demo-cluster)
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
sections="${*:-analysis operator training serving ann features incremental drift demo pods demo-cluster}"
want() { [[ " $sections " == *" $1 "* ]]; }

if want analysis; then
echo "== rollout analysis: sample size and error rates" >&2
cargo run -q --release -p reco-rollout --example sample_size | tee "$out/analysis.md"
record analysis "Rollout analysis: false rollbacks and power on heterogeneous users, impressions to decide, sample ratio mismatch" "$out/analysis.md"
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
if want pods; then
echo "== images and pods: sizes, podman run to ready, artifact download from S3" >&2
# RECO_IMAGE_PROFILE=dev measures the images `make test` builds (no release compile);
# RECO_BENCH_VERSION names a version directory to serve (default: train one, seed 1).
profile="${RECO_IMAGE_PROFILE:-release}"
scripts/build-images.sh --profile "$profile" all > "$out/images.tsv"
version="${RECO_BENCH_VERSION:-}"
if [[ -z "$version" ]]; then
    cargo build -q --release -p reco-cli
    version="$out/pods-v1"
    target/release/reco train --data "$(scripts/ensure-ml100k.sh)" --out "$version" --seed 1 --quiet >/dev/null
fi
cargo build -q -p reco-node --example time_to_ready
{
    echo "Command: \`scripts/build-images.sh --profile $profile all\` on the local Debian 12 base, then"
    echo "\`cargo run -p reco-node --example time_to_ready -- --version-dir DIR --component C --runs 5\`:"
    echo "the version uploaded to moto (S3 protocol, on this machine), each run a fresh pod rendered by the operator's"
    echo "builders and run with podman (reco-node), from \`podman run\` to its readiness probe passing;"
    echo "download+verify is the pod's own log figure (fetch of every file with its sha256 checked)."
    echo "1M items: the same version grown by \`reco synthetic-catalog --items 1000000\` (synthetic items embedded by its"
    echo "item tower), one run each with \`--memory-limit 8Gi\`: under the rendered default of 2Gi the retrieval pod is"
    echo "OOM-killed at 2 GB while it builds its HNSW index."
    echo
    echo "| image ($profile binaries) | size |"
    echo "|---|---|"
    sed 's/\t/ | /; s/^/| /; s/$/ |/' "$out/images.tsv"
    echo
    echo "| pod | version | upload | podman run to ready (median of runs) | download+verify (median) |"
    echo "|---|---|---|---|---|"
    row() { # label runs [time_to_ready flags...]
        local label="$1" runs="$2"; shift 2
        target/debug/examples/time_to_ready --runs "$runs" "$@" 2>/dev/null \
            | sed -E "s/^([A-Za-z]+) pod, version [^ ]+ \(([0-9.]+ MB)\): upload ([0-9.]+ s); podman run to ready median ([0-9.]+ s) of ([0-9]+); download\+verify median ([0-9.]+ s)$/| \1 | $label, \2 | \3 | \4 (of \5) | \6 |/"
    }
    for component in ranking retrieval; do
        row ml-100k 5 --version-dir "$version" --component "$component"
    done
    # The same version grown to 1M items (synthetic ones embedded by its item tower); one run each
    # (the retrieval pod builds its HNSW index at start), with an 8Gi limit: the default 2Gi does not hold it.
    cargo build -q --release -p reco-cli
    LD_LIBRARY_PATH="$LIBTORCH/lib:$LIBTORCH/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" target/release/reco synthetic-catalog --from "$version" --out "$out/pods-1m" \
        --items 1000000 --quiet >/dev/null
    for component in ranking retrieval; do
        row "1M items" 1 --version-dir "$out/pods-1m" --component "$component" --memory-limit 8Gi
    done
} | tee "$out/pods.md"
record pods "Images and pods: sizes, podman run to ready, artifact download" "$out/pods.md"
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
    print(f"| {seed} | {wall:.0f} s | {statistics.median_low(rates):,.0f} | {training['two_tower_best_epoch']} | {peak / 1024:.0f} MiB |")
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
# load_rows MODELS CATALOGUE TTL...: starts reco standalone on MODELS once per TTL and prints one table row per load.
load_rows() {
    local dir="$1" catalogue="$2"; shift 2
    for ttl in "$@"; do
        rm -rf "$dir/.state"
        local started=$SECONDS
        target/release/reco standalone --models "$dir" --seed-data ml-100k --http "127.0.0.1:$port" \
            --grpc "127.0.0.1:$((port + 1))" --cache-ttl-seconds "$ttl" >"$out/standalone.log" 2>&1 &
        local pid=$!
        # A large catalogue is indexed (HNSW build) before the service is ready: wait up to an hour.
        for _ in $(seq 1 7200); do
            curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
            kill -0 "$pid" 2>/dev/null || { tail -5 "$out/standalone.log" >&2; echo "reco standalone exited" >&2; exit 1; }
            sleep 0.5
        done
        echo "reco standalone on the $catalogue catalogue, cache TTL $ttl s: ready in $((SECONDS - started)) s" \
            | tee -a "$out/ready.txt" >&2
        local cache=$([[ $ttl == 0 ]] && echo "off" || echo "${ttl} s TTL")
        for run in "closed --concurrency 8" "open --rate 300 --concurrency 64" "open --rate 400 --concurrency 64"; do
            target/release/reco loadgen --url "http://127.0.0.1:$port" --mode $run --duration 20 --warmup 3 \
                --json "$out/load.json" >/dev/null
            python3 - "$out/load.json" "$catalogue" "$cache" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
offered = f"{r['target_rate']:.0f}/s" if r["target_rate"] else f"{r['concurrency']} workers"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['mode']} | {offered} | {r['throughput_rps']:.0f}/s | {r['p50_ms']:.2f} ms | "
      f"{r['p90_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['errors']} | {r['degraded']} |")
PY
        done
        kill "$pid"; wait "$pid" || true
    done
}
big="$out/models-1m"
mkdir -p "$big"
target/release/reco synthetic-catalog --from "$models/v1" --out "$big/v1" --items 1000000 >&2
{
    echo 'Command: `target/release/reco standalone --models DIR --seed-data ml-100k --cache-ttl-seconds T` with DIR/v1 from'
    echo '`reco train --data ml-100k --seed 1`, driven by `target/release/reco loadgen` on the same machine (it takes CPU too).'
    echo 'Every request runs the whole funnel (features, user tower, ANN over qdrant-edge, item-to-item, popular, fresh,'
    echo 'ranker on ~250 candidates, MMR reranking, token) unless the recommendation cache answers it; users 1..943 round-robin,'
    echo 'page size 20. Bar: p99 <= 20 ms at >= 300 requests/s on ml-100k.'
    echo
    echo 'The 1M catalogue is the same version grown to 1,000,000 items by'
    echo '`target/release/reco synthetic-catalog --from DIR/v1 --out DIR1M/v1 --items 1000000`: the 1,682 trained items'
    echo 'plus synthetic ones (random genres, year and title) embedded by the item tower from content, 64 dims, all in the'
    echo 'HNSW index of qdrant-edge (built when the standalone starts; that time is not in the figures).'
    echo
    echo '| catalogue | cache | loop | offered | throughput | p50 | p90 | p99 | errors | degraded |'
    echo '|---|---|---|---|---|---|---|---|---|---|'
    load_rows "$models" "ml-100k (1,682 items)" 0 30
    load_rows "$big" "synthetic 1M items" 0
    echo
    sed 's/^/- /' "$out/ready.txt"
} | tee "$out/serving.md"
record serving "Serving: /v1/recommend of reco standalone on MovieLens-100K and a 1M-item catalogue" "$out/serving.md"
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

if want drift; then
echo "== feature drift: PSI per ranker feature, catalogue users then new users" >&2
# The PSI figures do not depend on the build profile: the debug binary saves a release build.
cargo build -q -p reco-cli
drift="$out/drift"
mkdir -p "$drift/models"
target/debug/reco train --data ml-100k --out "$drift/models/v1" --seed 1 --quiet >/dev/null
port=18580
# Windows of 500 sampled requests (one in 4): several close in each 60 s phase of the debug build.
RECO_DRIFT_WINDOW_REQUESTS=500 target/debug/reco standalone --models "$drift/models" --seed-data ml-100k --http "127.0.0.1:$port" \
    --grpc "127.0.0.1:$((port + 1))" --cache-ttl-seconds 0 >"$drift/standalone.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { tail -5 "$drift/standalone.log" >&2; echo "reco standalone exited" >&2; exit 1; }
    sleep 0.5
done
# phase NAME LOADGEN-FLAGS...: 60 s of traffic, then the PSI of the last window (all of this phase).
phase() {
    local name="$1"; shift
    target/debug/reco loadgen --url "http://127.0.0.1:$port" --mode closed --concurrency 8 --duration 60 --warmup 5 \
        "$@" --json "$drift/$name.json" >/dev/null
    curl -s "http://127.0.0.1:$port/metrics" | grep '^reco_ranking_feature_psi{' >"$drift/$name.psi"
}
phase catalogue --users 943
phase new --users 5000 --first-user 100000
kill "$pid"; wait "$pid" || true
{
    echo 'Command: `scripts/bench.sh drift`: `reco train --data ml-100k --seed 1`, then `reco standalone --seed-data ml-100k`'
    echo 'under `reco loadgen --mode closed --concurrency 8 --duration 60`, first for the 943 MovieLens users, then for'
    echo '5,000 new users (`--first-user 100000`, no history). PSI of the last closed window (500 sampled requests,'
    echo 'one in 4) against the distribution the trainer saved for the validation users. Alert level: 0.2.'
    echo
    python3 - "$drift/catalogue.psi" "$drift/new.psi" <<'PY'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.search(r'feature="([^"]+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
catalogue, new = read(sys.argv[1]), read(sys.argv[2])
print("| feature | PSI, catalogue users | PSI, new users |")
print("|---|---|---|")
for feature in sorted(catalogue.keys() | new.keys(), key=lambda f: -new.get(f, 0)):
    flag = lambda v: f"**{v:.3f}**" if v > 0.2 else f"{v:.3f}"
    print(f"| `{feature}` | {flag(catalogue.get(feature, float('nan')))} | {flag(new.get(feature, float('nan')))} |")
PY
} | tee "$out/drift.md"
record drift "Feature drift: PSI of the ranker's inputs, the catalogue's users against new users" "$out/drift.md"
fi

if want demo; then
echo "== demo: v2 promoted, v3 rolled back, and 20 A/A runs" >&2
cargo build -q --release -p reco-cli
scripts/ensure-ml100k.sh >/dev/null
demo_cmd=(target/release/reco demo --prometheus --seed 42)
"${demo_cmd[@]}" --out "$out/demo" >"$out/demo.log"
# A/A at 150 requests/s with 2% noise clicks: a CTR floor both sides share, so that the test can confirm an
# identical model within the steps' maxDuration (at the scenario's 50/s and 0.1% noise it cannot; see docs/demo.md).
aa_cmd=(target/release/reco demo --seed 42 --aa-runs 20 --rate 150 --noise 0.02)
"${aa_cmd[@]}" --out "$out/aa" >"$out/aa.log"
python3 - "$out/demo/report.json" "$out/aa/aa-report.json" "${demo_cmd[*]} --out DIR" "${aa_cmd[*]} --out DIR" <<'PY' | tee "$out/demo.md"
import json, statistics, sys
demo, aa = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"Commands: `{sys.argv[3]}` (the scenario: 50 requests/s of replayed ml-100k test users, 0.1% noise clicks),")
print(f"then `{sys.argv[4]}` (A/A: v1 against a copy of itself, a fresh stack per run). Release build;")
print("the demo policy of docs/demo.md.")
print("Impressions to decision count both sides; \"candidate\" counts the new version's own.\n")
print("| version | outcome | wall time to decision | impressions to decision | candidate impressions | candidate CTR | reason |")
print("|---|---|---|---|---|---|---|")
for name, v in demo["versions"].items():
    print(f"| {name} | {v['outcome']} | {v['wall_seconds']:.0f} s | {v['impressions_to_decision']:,} | "
          f"{v['candidate_impressions_to_decision']:,} | {100 * v['ctr']:.2f}% | {v['reason']} |")
r = demo["requests"]
print(f"\n{r['total']:,} requests ({r['recommend']:,} recommendations), {r['failed']} failed, {r['shed']} shed.\n")
runs = aa["runs"]
walls = [run["wall_seconds"] for run in runs]
print(f"A/A: {len(runs)} runs: {aa['promoted']} promoted, **{aa['rolled_back_by_analysis']} false rollbacks** by the analysis, "
      f"{aa['rolled_back_by_timeout']} rolled back by a step's maxDuration; median {statistics.median_low(walls):.0f} s per "
      f"rollout; {aa['requests']['total']:,} requests, {aa['requests']['failed']} failed.")
for run in runs:
    if run["outcome"] != "promoted":
        print(f"- run {run['run']}: {run['outcome']} ({run['decided_by']}): {run['reason']}")
PY
record demo "The main job: v2 promoted, v3 rolled back on live CTR (reco demo), and A/A runs" "$out/demo.md"
fi

if want demo-cluster; then
echo "== demo-cluster: the operator rolls v2 out and v3 back on genuine API servers, pods run with podman" >&2
started=$SECONDS
RECO_DEMO_OUT="$out/demo-cluster" scripts/demo-cluster.sh >"$out/demo-cluster.log" 2>&1
total=$((SECONDS - started))
python3 - "$out/demo-cluster" "$out/demo-cluster.log" "$total" "${RECO_CACHE:-$HOME/.cache/reco}/kube/build-times.txt" <<'PY' | tee "$out/demo-cluster.md"
import json, re, sys
out, log, total, builds = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), sys.argv[4]
report = json.load(open(f"{out}/report.json"))
ready = int(re.search(r"Prometheus and S3 ready after (\d+) s", log).group(1))
built = int(re.search(r"binaries and images ready after (\d+) s", log).group(1))
control_plane = re.search(r"control plane ready in (\d+) s", log).group(1)
print("Command: `make demo-cluster` (`scripts/demo-cluster.sh`: release build incremental, models cached, API servers")
print("built; genuine kube-apiserver 1.20 + apiextensions-apiserver 1.36, reco-node running every pod with podman,")
print("the operator installed from the chart with two replicas, Prometheus, moto as S3), 50 requests/s of replayed")
print("ml-100k users, the demo policy of docs/demo.md.\n")
print("| step | seconds from `make demo-cluster` |")
print("|---|---:|")
print(f"| binaries and images ready (cargo, podman build) | {built} |")
print(f"| control plane up (kube-up) | {control_plane} s of its own |")
print(f"| control plane, node, operator, Prometheus, S3 ready | {ready} |")
for name, v in report["versions"].items():
    print(f"| {name} {v['outcome'].replace('_', ' ')} ({v['wall_seconds']:.0f} s after it was applied) | {ready + v['decided_at_seconds']:.0f} |")
print(f"| everything stopped | {total} |\n")
r = report["requests"]
print(f"Requests: {r['total']:,} ({r['recommend']:,} recommendations, {r['events']:,} clicks), **{r['failed']} failed**, "
      f"{r['retried']} needed the client's one retry, {r['degraded']} answers degraded.\n")
print("CPU time and peak memory of each pod over the run (`podman stats` every 5 s):\n")
print("| container | CPU | peak memory |")
print("|---|---:|---:|")
for line in open(f"{out}/containers.txt"):
    m = re.match(r"(\S+)\s+cpu\s+([\d.]+) s\s+peak memory\s+([\d.]+) MiB", line)
    if m:
        print(f"| {m.group(1)} | {float(m.group(2)):.1f} s | {float(m.group(3)):.0f} MiB |")
print("\nAPI servers built from Debian sources (`scripts/ensure-kube-apiserver.sh`, once, cached):\n")
for line in open(builds):
    name, seconds, when, where = line.rstrip("\n").split("\t")
    print(f"- {name}: {seconds} ({where}, {when})")
PY
record demo-cluster "The main job through the operator: make demo-cluster" "$out/demo-cluster.md"
fi

if want features; then
echo "== events: ingestion, replay after a crash, memory under 1M user ids" >&2
cargo build -q --release -p reco-features --example ingest_bench
bench=target/release/examples/ingest_bench
{
    echo 'Command: `cargo build --release -p reco-features --example ingest_bench`, then the modes below. The service'
    echo 'is built as `reco serve features` builds it (embedded store over redb, file event log with group commit) in a'
    echo 'temporary directory on this machine'"'"'s disk; every acknowledgement means fsynced and applied once.'
    echo
    echo 'Ingestion (`ingest_bench ingest --clients C --events 20000 [--kafka-brokers B]`): closed-loop clients over'
    echo 'gRPC on 127.0.0.1, each request one event with its own request id. Kafka: a tansu broker on this machine'
    echo '(`scripts/ensure-kafka-broker.sh`, SQLite storage, whose syncing is tansu'"'"'s own), topic of 3 partitions; an'
    echo 'acknowledgement waits for the broker'"'"'s (idempotent producer, acks=all) and the store'"'"'s apply. With Redis'
    echo '(Debian'"'"'s redis-server on this machine) the partitions'"'"' owner (here the same process, through the consumer'
    echo 'group) applies each record, and the acknowledgement waits until it did (read-your-writes).'
    echo
    echo '| path | events | events/s acknowledged | p50 ack ms | p99 ack ms |'
    echo '|---|---:|---:|---:|---:|'
    for clients in 1 64; do "$bench" ingest --clients "$clients" --events 20000; done
    eval "$(scripts/ensure-kafka-broker.sh)"
    kafka_dir="$(mktemp -d)"
    kafka_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    (cd "$kafka_dir" && exec "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka_port" --storage-engine sqlite://tansu.db >/dev/null 2>&1) &
    kafka_pid=$!
    until "$TANSU_BIN" topic create bench --partitions 3 --broker "tcp://127.0.0.1:$kafka_port" >/dev/null 2>&1; do sleep 0.2; done
    for clients in 1 64; do "$bench" ingest --clients "$clients" --events 20000 --kafka-brokers "127.0.0.1:$kafka_port"; done
    # Redis with Kafka: the replica's consumer applies its partitions; an acknowledgement waits for that.
    redis_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$REDIS_SERVER_BIN" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$kafka_dir" >/dev/null &
    redis_pid=$!
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $redis_port))" 2>/dev/null; do sleep 0.1; done
    for clients in 1 64; do
        "$bench" ingest --clients "$clients" --events 20000 --kafka-brokers "127.0.0.1:$kafka_port" \
            --redis-url "redis://127.0.0.1:$redis_port"
    done
    kill "$redis_pid" "$kafka_pid"; wait "$redis_pid" "$kafka_pid" 2>/dev/null || true; rm -rf "$kafka_dir"
    echo
    echo 'Replay at start after a crash before any checkpoint (`ingest_bench replay --events 1000000`): the whole log'
    echo 'is read, each id checked against the window and each event applied (100,000 users); time from opening the'
    echo 'store to ready, and the process RSS after (1M ids in the window, 100,000 users in memory).'
    echo
    echo '| events | log size | replay s | s per 1M events | RSS MiB |'
    echo '|---:|---:|---:|---:|---:|'
    "$bench" replay --events 1000000
    echo
    echo 'Memory under a stream of new user ids (`ingest_bench memory --users 1000000 --max-users M`): one event per'
    echo 'new user, in batches of 1,000, the default 60 s checkpoints plus the early ones the store asks for; process'
    echo 'RSS every 100,000 users. The unbounded row (`--max-users-in-memory` above the stream) is the baseline; every'
    echo 'row also holds the window of recent event ids (up to `--dedup-capacity`, 1M ids).'
    echo
    echo '| --max-users-in-memory | users seen | RSS MiB | users in memory |'
    echo '|---:|---:|---:|---:|'
    for max in 10000000 100000 20000; do "$bench" memory --users 1000000 --max-users "$max" | sed -n '1p;5p;10p'; done
} | tee "$out/features.md"
record features "Events: ingestion, replay after a crash, memory under 1M user ids" "$out/features.md"
fi

if want incremental; then
echo "== incremental training: a child trained on its parent's logged clicks vs the parent" >&2
report="$out/incremental.jsonl"
scripts/ensure-ml100k.sh >/dev/null
RECO_INCREMENTAL_SEEDS=1,2,3 RECO_INCREMENTAL_REPORT="$report" \
    cargo nextest run -p reco-cli --test incremental --no-capture >&2
python3 - "$report" <<'PY' | tee "$out/incremental.md"
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print("Command: `RECO_INCREMENTAL_SEEDS=1,2,3 RECO_INCREMENTAL_REPORT=FILE cargo nextest run -p reco-cli --test incremental`:")
print("the loop of services/cli/tests/incremental.rs once per seed. The parent is the demo's default version (seed 42,")
print("full ml-100k); `reco standalone --seed-data ml-100k --seed-future validation` serves it while replayed users send")
print("150 requests/s for 75 s and click what it shows them from the validation part of their history; then")
print("`reco train --init-from PARENT --events events.jsonl --seed N` trains the child. Both are scored in the child's")
print("run on the test part (which no click came from), same users, same histories; the served model is the two-tower")
print("plus ranker.")
print()
print("The paired difference is the mean over the test users of the child's NDCG@10 minus the parent's, with its 95%")
print("confidence interval (`training.json` `incremental.test_gain_over_parent`): an interval above 0 means the child")
print("beats its parent on this split beyond the users' noise.")
print()
print("| seed | clicks logged | used | parent NDCG@10 | child NDCG@10 | gain | paired difference [95% CI] | parent Recall@10 | child Recall@10 | two-tower parent / child NDCG@10 | train s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
gains = []
for r in runs:
    p, c, d = r["parent"], r["child"], r["paired"]
    gain = c["ndcg@10"] / p["ndcg@10"] - 1
    gains.append(gain)
    print(f"| {r['seed']} | {r['clicks']:,} | {r['events']['used']:,} | {p['ndcg@10']:.4f} | {c['ndcg@10']:.4f} | {gain:+.1%} "
          f"| {d['mean']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] "
          f"| {p['recall@10']:.4f} | {c['recall@10']:.4f} | {r['parent_two_tower']['ndcg@10']:.4f} / {r['child_two_tower']['ndcg@10']:.4f} "
          f"| {r['train_seconds']:.0f} |")
print()
above = sum(r["paired"]["ci95_low"] > 0 for r in runs)
print(f"Median gain of the served NDCG@10 over the parent: {statistics.median(gains):+.1%} ({len(gains)} seeds); "
      f"the paired interval lies above 0 in {above} of {len(runs)}.")
PY
record incremental "Incremental training: a child trained on its parent's logged clicks, against the parent" "$out/incremental.md"
fi

echo "recorded in BENCHMARKS.md" >&2
