//! A stand-in for a kubelet, for tests and demos on machines where no
//! kubelet can run: it runs a pod spec as the operator renders it with
//! podman (`podman run`, one container per pod container) and probes it.
//!
//! What it honours: the container's image, command, args, env (values,
//! Secret and ConfigMap keys, `envFrom`), Secret and ConfigMap volumes as
//! files, emptyDir volumes (a host directory per pod, shared by its
//! containers), PersistentVolumeClaims as host directories that outlive the
//! pod, `fsGroup` (volumes group-owned and group-writable, the group added),
//! the user (`runAsUser`/`runAsGroup`, else the image's, refused when
//! `runAsNonRoot` and the user is root), read-only root, dropped
//! capabilities, no privilege escalation, CPU and memory limits, and HTTP
//! probes (startup, readiness, liveness) against the pod's address.
//!
//! What it leaves out: scheduling, image pulls (images must be local),
//! requests (only limits are enforced), exec and TCP probes, init and
//! sidecar containers, projected and downward-API volumes (of the downward
//! API only `fieldRef` env of the pod's name, namespace and service
//! account), pod networking beyond one podman bridge network with DNS
//! aliases, and restarts (a caller that wants them starts the pod again).
//!
//! API access: with [`Placement::api`], a pod that automounts its service
//! account's token gets it as a kubelet mounts it
//! (`/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`,
//! from the token Secret the controller manager made for the account), and
//! `KUBERNETES_SERVICE_HOST`/`_PORT` name `kubernetes.default.svc` (a host
//! entry for the agent's forwarder to the API server, not a ClusterIP).

pub mod agent;
mod forward;
mod quantity;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use quantity::{cpus, memory_bytes};

/// Why a pod cannot run as specified.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("podman {args}: {message}")]
    Podman { args: String, message: String },
    #[error("pod {pod}: {message}")]
    Spec { pod: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io { path: path.to_path_buf(), source }
}

/// The podman CLI, configured by `CONTAINERS_CONF` (scripts/ensure-podman.sh).
#[derive(Clone, Debug)]
pub struct Podman;

impl Podman {
    /// Podman, when it runs containers here; otherwise why not.
    pub fn available() -> Result<Podman, String> {
        let podman = Podman;
        podman.run(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]).map_err(|e| e.to_string())?;
        Ok(podman)
    }

    fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<String, NodeError> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let failed = |message: String| NodeError::Podman { args: args.join(" "), message };
        let out = Command::new("podman").args(&args).output().map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn image_exists(&self, image: &str) -> bool {
        self.run(&["image", "exists", image]).is_ok()
    }

    /// Creates the bridge network (with DNS) unless it exists.
    pub fn ensure_network(&self, name: &str) -> Result<(), NodeError> {
        if self.run(&["network", "exists", name]).is_err() {
            self.run(&["network", "create", name])?;
        }
        Ok(())
    }

    /// The host's address on `network`, where containers reach host services listening on 0.0.0.0.
    pub fn network_gateway(&self, network: &str) -> Result<String, NodeError> {
        let json = self.run(&["network", "inspect", network])?;
        let parsed: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| NodeError::Podman { args: format!("network inspect {network}"), message: e.to_string() })?;
        parsed[0]["subnets"][0]["gateway"].as_str().map(str::to_owned).ok_or_else(|| NodeError::Podman {
            args: format!("network inspect {network}"),
            message: "no subnet gateway".into(),
        })
    }

    /// The image's configured user (`USER` of its Dockerfile).
    fn image_user(&self, image: &str) -> Result<String, NodeError> {
        self.run(&["image", "inspect", "--format", "{{.Config.User}}", image])
    }
}

/// Where and how one pod runs.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The pod's unique name on this node (its containers are `<pod>-<container>`).
    pub pod: String,
    /// The pod's name and namespace in the API (`fieldRef` env).
    pub name: String,
    pub namespace: String,
    pub network: String,
    /// DNS names the pod answers to on the network (its Services' names).
    pub aliases: Vec<String>,
    /// Host directory of the pod's emptyDir, Secret and ConfigMap volumes.
    pub pod_dir: PathBuf,
    /// Host directories of its PersistentVolumeClaims, by claim name.
    pub claims: BTreeMap<String, PathBuf>,
    /// Where the pod reaches the API server, when it may.
    pub api: Option<ApiAccess>,
}

/// The address on the pod network that forwards to the API server (what
/// the `kubernetes.default` Service is on a cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    pub host_ip: String,
    pub port: u16,
}

/// Where a kubelet mounts a pod's service account token.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name pods reach the API server at; the API server's certificate has it.
pub const API_HOST: &str = "kubernetes.default.svc";

/// The objects a pod's env and volumes name.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub secrets: BTreeMap<String, Secret>,
    pub config_maps: BTreeMap<String, ConfigMap>,
}

impl Objects {
    fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(name)?;
        let mut data: BTreeMap<String, Vec<u8>> =
            s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        data.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
        Some(data)
    }

    fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let c = self.config_maps.get(name)?;
        Some(c.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect())
    }
}

/// A pod whose containers podman runs.
#[derive(Clone, Debug)]
pub struct RunningPod {
    pub name: String,
    /// `(pod container, podman container)` names.
    pub containers: Vec<(Container, String)>,
    /// The pod's address on the network.
    pub ip: String,
}

/// How a probe went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl Podman {
    /// Starts every container of `spec` as `placement` says; the volumes
    /// and env come from `objects`. Refuses what it cannot honour.
    pub fn start_pod(&self, spec: &PodSpec, placement: &Placement, objects: &Objects) -> Result<RunningPod, NodeError> {
        let pod = &placement.pod;
        let bad = |message: String| NodeError::Spec { pod: pod.clone(), message };
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(bad("init containers are not supported by this stand-in".into()));
        }
        let volumes = self.materialize_volumes(spec, placement, objects)?;
        let api = api_args(spec, placement, objects)?;
        let mut containers = Vec::new();
        for container in &spec.containers {
            let env = resolve_env(container, spec, placement, objects).map_err(&bad)?;
            let image =
                container.image.clone().ok_or_else(|| bad(format!("container {} has no image", container.name)))?;
            let image_user = self.image_user(&image)?;
            let args = run_args(spec, container, placement, &volumes, &env, &image_user, &api).map_err(&bad)?;
            let name = format!("{pod}-{}", container.name);
            let _ = self.run(&["rm", "-f", &name]);
            let mut command = vec!["run".to_owned(), "-d".to_owned(), "--name".to_owned(), name.clone()];
            command.extend(args);
            self.run(&command)?;
            containers.push((container.clone(), name));
        }
        let first = &containers.first().ok_or_else(|| bad("no containers".into()))?.1;
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", placement.network);
        let ip = self.run(&["inspect", "--format", &format, first])?;
        Ok(RunningPod { name: pod.clone(), containers, ip })
    }

    /// Host directories for the pod's volumes, by volume name, with their files written.
    fn materialize_volumes(
        &self,
        spec: &PodSpec,
        placement: &Placement,
        objects: &Objects,
    ) -> Result<BTreeMap<String, PathBuf>, NodeError> {
        let pod = &placement.pod;
        let bad = |message: String| NodeError::Spec { pod: pod.clone(), message };
        let group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        let mut dirs = BTreeMap::new();
        for volume in spec.volumes.iter().flatten() {
            let dir = placement.pod_dir.join(&volume.name);
            if volume.empty_dir.is_some() {
                let _ = std::fs::remove_dir_all(&dir);
                make_dir(&dir, group)?;
            } else if let Some(secret) = &volume.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                let data = objects.secret(&name).ok_or_else(|| bad(format!("Secret {name:?} not found")))?;
                write_files(&dir, &data, secret.items.as_deref())?;
            } else if let Some(cm) = &volume.config_map {
                let data =
                    objects.config_map(&cm.name).ok_or_else(|| bad(format!("ConfigMap {:?} not found", cm.name)))?;
                write_files(&dir, &data, cm.items.as_deref())?;
            } else if let Some(claim) = &volume.persistent_volume_claim {
                let dir = placement.claims.get(&claim.claim_name).cloned().ok_or_else(|| {
                    bad(format!("PersistentVolumeClaim {:?} has no host directory", claim.claim_name))
                })?;
                make_dir(&dir, group)?;
                dirs.insert(volume.name.clone(), dir);
                continue;
            } else {
                return Err(bad(format!(
                    "volume {:?}: only emptyDir, Secret, ConfigMap and PVC are supported",
                    volume.name
                )));
            }
            dirs.insert(volume.name.clone(), dir);
        }
        Ok(dirs)
    }

    /// Writes the pod's Secret and ConfigMap volumes again from `objects`, as
    /// a kubelet propagates an updated ConfigMap; whether a file changed.
    pub fn refresh_files(&self, spec: &PodSpec, placement: &Placement, objects: &Objects) -> Result<bool, NodeError> {
        let mut changed = false;
        for volume in spec.volumes.iter().flatten() {
            let dir = placement.pod_dir.join(&volume.name);
            let (data, items) = if let Some(secret) = &volume.secret {
                (objects.secret(secret.secret_name.as_deref().unwrap_or_default()), secret.items.as_deref())
            } else if let Some(cm) = &volume.config_map {
                (objects.config_map(&cm.name), cm.items.as_deref())
            } else {
                continue;
            };
            if let Some(data) = data {
                changed |= write_files(&dir, &data, items)?;
            }
        }
        Ok(changed)
    }

    /// Runs one probe of every container once: `None` when no container has it.
    pub fn probe(&self, pod: &RunningPod, kind: ProbeKind) -> Option<Result<(), String>> {
        let mut result = None;
        for (container, _) in &pod.containers {
            let probe = match kind {
                ProbeKind::Startup => container.startup_probe.as_ref(),
                ProbeKind::Readiness => container.readiness_probe.as_ref(),
                ProbeKind::Liveness => container.liveness_probe.as_ref(),
            };
            let Some(probe) = probe else { continue };
            let outcome = http_probe(container, probe, &pod.ip);
            if outcome.is_err() {
                return Some(outcome);
            }
            result = Some(outcome);
        }
        result
    }

    /// Waits for the startup probes (within their failure budget) and then
    /// readiness, as a kubelet would before sending the pod traffic.
    pub fn wait_ready(&self, pod: &RunningPod, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::from("not probed");
        while started.elapsed() < timeout {
            if !self.running(pod) {
                return Err(format!("a container exited ({}): {}", self.exit_reason(pod), self.logs(pod)));
            }
            let started_ok = self.probe(pod, ProbeKind::Startup).is_none_or(|r| r.is_ok());
            match (started_ok, self.probe(pod, ProbeKind::Readiness)) {
                (true, None | Some(Ok(()))) => return Ok(started.elapsed()),
                (_, Some(Err(e))) => last = e,
                (false, _) => last = "startup probe failing".into(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("not ready after {timeout:?}: {last}"))
    }

    /// Whether every container of the pod still runs: a paused (frozen)
    /// process has not exited, and a kubelet would not restart it either.
    pub fn running(&self, pod: &RunningPod) -> bool {
        pod.containers.iter().all(|(_, name)| {
            self.run(&["inspect", "--format", "{{.State.Status}}", name]).is_ok_and(|s| s == "running" || s == "paused")
        })
    }

    /// How the pod's containers ended: exit code, and whether the memory limit killed them.
    pub fn exit_reason(&self, pod: &RunningPod) -> String {
        let format = "exit code {{.State.ExitCode}}, OOM killed {{.State.OOMKilled}}";
        let reasons: Vec<String> = pod
            .containers
            .iter()
            .filter_map(|(_, name)| self.run(&["inspect", "--format", format, name]).ok())
            .collect();
        reasons.join("; ")
    }

    /// Everything the pod's containers wrote to stdout and stderr.
    pub fn logs(&self, pod: &RunningPod) -> String {
        pod.containers
            .iter()
            .map(|(_, name)| {
                let out = Command::new("podman").args(["logs", name]).output();
                out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Paths the containers changed in their root file systems, outside their
    /// volumes: `podman diff` less what podman itself makes to run a container
    /// (mount points and their parents, `/etc/hosts`, `/etc/resolv.conf`, ...).
    pub fn root_changes(&self, pod: &RunningPod) -> Result<Vec<String>, NodeError> {
        const PODMAN_MADE: [&str; 6] =
            ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv", "/run", "/dev"];
        let mut changes = Vec::new();
        for (container, name) in &pod.containers {
            let mounts: Vec<String> = container.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect();
            let podman_made = |path: &str| {
                let made = PODMAN_MADE.iter().map(|p| p.to_string()).chain(mounts.iter().cloned());
                made.into_iter().any(|m| m == path || m.starts_with(&format!("{path}/")))
            };
            for line in self.run(&["diff", name])?.lines() {
                let path = line.split_once(' ').map_or(line, |(_, path)| path);
                if !line.is_empty() && !podman_made(path) {
                    changes.push(line.to_owned());
                }
            }
        }
        Ok(changes)
    }

    /// A field of `podman inspect` of the pod's first container.
    pub fn inspect(&self, pod: &RunningPod, format: &str) -> Result<String, NodeError> {
        self.run(&["inspect", "--format", format, &pod.containers[0].1])
    }

    /// Stops (SIGTERM, then SIGKILL after 10 s) and removes the pod's containers.
    pub fn stop_pod(&self, pod: &RunningPod) {
        for (_, name) in &pod.containers {
            let _ = self.run(&["rm", "-f", "-t", "10", name]);
        }
    }
}

fn make_dir(dir: &Path, group: Option<i64>) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if let Some(group) = group {
        // As a kubelet does for fsGroup: group-owned, group-writable, setgid.
        std::os::unix::fs::chown(dir, None, Some(group as u32)).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2775)).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes a Secret's or ConfigMap's keys as files in `dir`, in place: each
/// file renamed over the old one (a reader sees the old or the new content),
/// stale ones removed, the directory itself kept (it is bind-mounted).
/// Returns whether anything changed, as a kubelet's volume update would.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<bool, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files: Vec<(&str, &str)> = match items {
        Some(items) => items.iter().map(|i| (i.key.as_str(), i.path.as_str())).collect(),
        None => data.keys().map(|k| (k.as_str(), k.as_str())).collect(),
    };
    let mut changed = false;
    for (key, path) in &files {
        let bytes = data.get(*key).ok_or_else(|| NodeError::Io {
            path: dir.join(path),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no key {key:?}")),
        })?;
        let target = dir.join(path);
        if std::fs::read(&target).is_ok_and(|old| old == *bytes) {
            continue;
        }
        let tmp = dir.join(format!(".{path}.new"));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
        changed = true;
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !files.iter().any(|(_, path)| *path == name) {
            let _ = std::fs::remove_file(entry.path());
            changed = true;
        }
    }
    Ok(changed)
}

/// The `podman run` flags that give a pod API access as a kubelet does (see
/// [`Placement::api`]): its service account's token files, the API
/// server's address and a host entry for it. Empty without API access or
/// with `automountServiceAccountToken: false`.
fn api_args(spec: &PodSpec, placement: &Placement, objects: &Objects) -> Result<Vec<String>, NodeError> {
    let Some(api) = &placement.api else { return Ok(Vec::new()) };
    if spec.automount_service_account_token == Some(false) {
        return Ok(Vec::new());
    }
    let account = service_account(spec);
    let token = objects
        .secrets
        .values()
        .find(|s| {
            s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                && s.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/service-account.name"))
                    == Some(&account.to_owned())
        })
        .and_then(|s| objects.secret(&s.metadata.name.clone().unwrap_or_default()))
        .filter(|data| ["token", "ca.crt", "namespace"].iter().all(|k| data.contains_key(*k)))
        .ok_or_else(|| NodeError::Spec {
            pod: placement.pod.clone(),
            message: format!("no token Secret of ServiceAccount {account:?} yet (the controller manager makes it)"),
        })?;
    let dir = placement.pod_dir.join("kube-api-access");
    write_files(&dir, &token, None)?;
    Ok(vec![
        "--env".into(),
        format!("KUBERNETES_SERVICE_HOST={API_HOST}"),
        "--env".into(),
        format!("KUBERNETES_SERVICE_PORT={}", api.port),
        "--add-host".into(),
        format!("{API_HOST}:{}", api.host_ip),
        "--volume".into(),
        format!("{}:{SERVICE_ACCOUNT_DIR}:ro", dir.display()),
    ])
}

fn service_account(spec: &PodSpec) -> &str {
    spec.service_account_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("default")
}

/// The container's environment: values, Secret and ConfigMap keys, the
/// pod's name, namespace and service account, `envFrom`.
fn resolve_env(
    container: &Container,
    spec: &PodSpec,
    placement: &Placement,
    objects: &Objects,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for from in container.env_from.iter().flatten() {
        let (kind, name, optional, data) = if let Some(s) = &from.secret_ref {
            ("Secret", s.name.clone(), s.optional.unwrap_or(false), objects.secret(&s.name))
        } else if let Some(c) = &from.config_map_ref {
            ("ConfigMap", c.name.clone(), c.optional.unwrap_or(false), objects.config_map(&c.name))
        } else {
            continue;
        };
        match data {
            Some(data) => env.extend(data.into_iter().map(|(k, v)| {
                (format!("{}{k}", from.prefix.as_deref().unwrap_or("")), String::from_utf8_lossy(&v).into_owned())
            })),
            None if optional => {}
            None => return Err(format!("envFrom: {kind} {name:?} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) if from.field_ref.is_some() => {
                match from.field_ref.as_ref().map(|f| f.field_path.as_str()).unwrap_or_default() {
                    "metadata.name" => placement.name.clone(),
                    "metadata.namespace" => placement.namespace.clone(),
                    "spec.serviceAccountName" => service_account(spec).to_owned(),
                    other => return Err(format!("env {}: fieldRef {other:?} is not supported here", var.name)),
                }
            }
            (None, Some(from)) => {
                let (data, key, what) = if let Some(s) = &from.secret_key_ref {
                    (objects.secret(&s.name), &s.key, format!("Secret {:?}", s.name))
                } else if let Some(c) = &from.config_map_key_ref {
                    (objects.config_map(&c.name), &c.key, format!("ConfigMap {:?}", c.name))
                } else {
                    return Err(format!("env {}: only Secret and ConfigMap keys and fieldRef are supported", var.name));
                };
                let bytes = data
                    .and_then(|d| d.get(key).cloned())
                    .ok_or_else(|| format!("env {}: {what} has no key {key:?}", var.name))?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// `podman run` flags for one container (after `run -d --name NAME`), with
/// `extra` flags before the image. Pure.
pub fn run_args(
    pod: &PodSpec,
    container: &Container,
    placement: &Placement,
    volumes: &BTreeMap<String, PathBuf>,
    env: &[(String, String)],
    image_user: &str,
    extra: &[String],
) -> Result<Vec<String>, String> {
    let mut args = vec!["--network".to_owned(), placement.network.clone()];
    for alias in &placement.aliases {
        args.extend(["--network-alias".to_owned(), alias.clone()]);
    }
    args.extend(["--hostname".to_owned(), placement.pod.clone()]);
    let pod_sc = pod.security_context.as_ref();
    let sc = container.security_context.as_ref();
    let user = sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user));
    let group = sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc.and_then(|s| s.run_as_non_root).or(pod_sc.and_then(|s| s.run_as_non_root)).unwrap_or(false);
    let effective =
        user.map(|u| u.to_string()).unwrap_or_else(|| image_user.split(':').next().unwrap_or("").to_owned());
    if non_root && (effective.is_empty() || effective == "0" || effective == "root") {
        return Err(format!("container {}: runAsNonRoot, but it would run as root", container.name));
    }
    if non_root && effective.parse::<u32>().is_err() {
        return Err(format!(
            "container {}: runAsNonRoot needs a numeric user, the image has {image_user:?}",
            container.name
        ));
    }
    if let Some(user) = user {
        args.extend(["--user".to_owned(), group.map_or(user.to_string(), |g| format!("{user}:{g}"))]);
    }
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        args.extend(["--group-add".to_owned(), fs_group.to_string()]);
    }
    if sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false) {
        args.push("--read-only".to_owned());
        // Kubernetes gives a read-only container no writable /run or /tmp of its own.
        args.push("--read-only-tmpfs=false".to_owned());
    }
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        args.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
    }
    for cap in sc.and_then(|s| s.capabilities.as_ref()).and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        args.extend(["--cap-drop".to_owned(), cap.to_lowercase()]);
    }
    if let Some(limits) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        if let Some(cpu) = limits.get("cpu") {
            args.extend(["--cpus".to_owned(), cpus(&cpu.0)?.to_string()]);
        }
        if let Some(memory) = limits.get("memory") {
            args.extend(["--memory".to_owned(), format!("{}b", memory_bytes(&memory.0)?)]);
        }
    }
    for (name, value) in env {
        args.extend(["--env".to_owned(), format!("{name}={value}")]);
    }
    for mount in container.volume_mounts.iter().flatten() {
        let dir = volumes.get(&mount.name).ok_or_else(|| format!("volumeMount {:?} names no volume", mount.name))?;
        let mode = if mount.read_only.unwrap_or(false) { "ro" } else { "rw" };
        args.extend(["--volume".to_owned(), format!("{}:{}:{mode}", dir.display(), mount.mount_path)]);
    }
    args.extend(extra.iter().cloned());
    if let Some(command) = &container.command {
        let (first, rest) = command.split_first().ok_or("empty command")?;
        args.extend(["--entrypoint".to_owned(), first.clone()]);
        args.push(container.image.clone().unwrap_or_default());
        args.extend(rest.iter().cloned());
    } else {
        args.push(container.image.clone().unwrap_or_default());
    }
    args.extend(container.args.iter().flatten().cloned());
    Ok(args)
}

/// One HTTP probe: success is a status from 200 to 399, as a kubelet counts it.
fn http_probe(container: &Container, probe: &Probe, ip: &str) -> Result<(), String> {
    let get = probe.http_get.as_ref().ok_or("only HTTP probes are supported")?;
    let port = match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("probe port {name:?} is not a port of the container"))?,
    };
    let url = format!("http://{ip}:{port}{}", get.path.as_deref().unwrap_or("/"));
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let client = reqwest::blocking::Client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
    match client.get(&url).send() {
        Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
        Ok(r) => Err(format!("{url}: {}", r.status())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}
