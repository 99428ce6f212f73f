# reco: the commands a developer and CI run. Each target installs what it
# needs (idempotent; big downloads are cached under ~/.cache/reco).

.PHONY: test bench demo demo-cluster crds lint images help

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

test: ## Install the tools, build the workspace and run every test.
	scripts/test.sh

bench: ## Run the benchmarks and record them in BENCHMARKS.md.
	scripts/bench.sh

demo: ## Run the whole product on one machine: v2 promoted, v3 rolled back (demo-out/report.json, ctr.png).
	@echo "[demo] a cold run takes about 35 min here (release build ~26, training ~5, rollouts ~4); with the build and models cached, about 5 min" >&2
	scripts/ensure-ml100k.sh >/dev/null
	eval "$$(scripts/env.sh)" && cargo build --release -p reco-cli --bin reco && target/release/reco demo --out ./demo-out

demo-cluster: ## The same through the operator: genuine API servers, pods run with podman (demo-cluster-out/).
	scripts/demo-cluster.sh

crds: ## Regenerate crds/ and its chart and kustomize copies from the Rust types.
	cargo run -q -p reco-operator --bin crdgen -- --out crds
	cargo run -q -p reco-operator --bin crdgen -- --out charts/reco/crds
	cargo run -q -p reco-operator --bin crdgen -- --out manifests/base/crds

lint: ## rustfmt, clippy (warnings as errors) and cargo-deny (licences, bans, sources).
	eval "$$(scripts/env.sh)" && cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings
	eval "$$(scripts/ensure-cargo-deny.sh)" && cargo deny check licenses bans sources

images: ## Build the container images with podman (or docker) on a local Debian base; no registry needed.
	scripts/build-images.sh all
