//! How reco is installed: the Helm chart, the kustomize manifests, the CR
//! samples, the GitOps files and the Dockerfiles.
//!
//! Needs `eval "$(scripts/ensure-k8s-tools.sh)"` (helm v4, kubectl 1.35) and
//! `scripts/ensure-prometheus.sh` (promtool) first; CI runs both.

mod chart;
mod dockerfiles;
mod gitops;
mod kustomize;
mod samples;
