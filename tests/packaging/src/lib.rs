//! Helpers for the packaging tests: run `helm` and `kubectl kustomize`,
//! parse what they render, check objects against the Kubernetes API types and
//! the reco CRDs, and run Argo CD health checks in Lua.
//!
//! `helm` (v4) and `kubectl` (1.35) come from `scripts/ensure-k8s-tools.sh`;
//! `promtool` from `scripts/env.sh`. The tests fail, naming the
//! script, when a tool is missing: CI runs both scripts first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

pub mod kinds;
pub mod lua;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root exists")
}

/// Path of a file or folder in the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

pub fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A Kubernetes tool installed by `scripts/ensure-k8s-tools.sh`, looked up in
/// `RECO_TOOLS_BIN`, then the script's cache, then `PATH`, and checked to be
/// the version the repository is tested with.
pub fn k8s_tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("RECO_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
            .join("reco")
    });
    let candidates = std::env::var_os("RECO_TOOLS_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([cache.join("k8s-tools/bin")])
        .map(|dir| dir.join(name))
        .chain(find_on_path(name));
    let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
        panic!(
            "`{name}` not found in RECO_TOOLS_BIN, the tools cache or PATH: run `eval \"$(scripts/ensure-k8s-tools.sh)\"` first (CI does)"
        )
    };
    let (args, expected): (&[&str], &str) = match name {
        "helm" => (&["version", "--short"], "v4."),
        "kubectl" => (&["version", "--client"], "Client Version: v1.35."),
        _ => unreachable!("only helm and kubectl come from ensure-k8s-tools.sh"),
    };
    let version = run(Command::new(&path).args(args)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        version.contains(expected),
        "{} is not the {name} these tests use ({expected}…, found {version:?}): run `eval \"$(scripts/ensure-k8s-tools.sh)\"` first",
        path.display()
    );
    path
}

/// `promtool`, from `PROMTOOL_BIN`, beside `PROMETHEUS_BIN`, or on `PATH`.
pub fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PROMETHEUS_BIN").map(|p| PathBuf::from(p).with_file_name("promtool")))
        .chain(find_on_path("promtool"))
        .find(|p| p.is_file())
        .expect("`promtool` not found (PROMTOOL_BIN, beside PROMETHEUS_BIN, PATH): run scripts/env.sh first (CI does)")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Runs a command; its stdout when it succeeds, else an error with its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    let stdout = String::from_utf8(output.stdout).context("stdout is not UTF-8")?;
    if output.status.success() {
        Ok(stdout)
    } else {
        bail!("{command:?} failed ({}):\n{}{}", output.status, String::from_utf8_lossy(&output.stderr), stdout)
    }
}

/// Release name and namespace every chart test renders with.
pub const RELEASE: &str = "reco";
pub const NAMESPACE: &str = "reco-system";

/// `helm template` of charts/reco with its CRDs, the given values files
/// (relative to the chart) and `--set` pairs.
pub fn helm_template(values_files: &[&str], sets: &[&str]) -> Result<String> {
    let chart = repo_path("charts/reco");
    let mut command = Command::new(k8s_tool("helm"));
    command.args(["template", RELEASE]).arg(&chart).args(["--namespace", NAMESPACE, "--include-crds"]);
    for file in values_files {
        command.arg("--values").arg(chart.join(file));
    }
    for set in sets {
        command.args(["--set", set]);
    }
    run(&mut command)
}

/// `helm template` with values given as a JSON object (written to a temporary file).
pub fn helm_template_with_values(values: &Value) -> Result<String> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), serde_json::to_string(values)?)?;
    let path = file.path().to_str().context("temporary path is not UTF-8")?;
    helm_template(&[path], &[])
}

/// `kubectl kustomize` of a folder of the repository.
pub fn kustomize(relative: &str) -> Result<String> {
    run(Command::new(k8s_tool("kubectl")).arg("kustomize").arg(repo_path(relative)))
}

/// Every non-empty document of a YAML stream, as JSON.
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

pub fn parse_document(yaml: &str) -> Result<Value> {
    let mut documents = parse_documents(yaml)?;
    ensure!(documents.len() == 1, "expected one YAML document, found {}", documents.len());
    Ok(documents.remove(0))
}

/// `kind/namespace/name` of an object, for messages.
pub fn describe(object: &Value) -> String {
    let field = |f: &str| object.pointer(f).and_then(Value::as_str).unwrap_or("-").to_owned();
    format!("{}/{}/{}", field("/kind"), field("/metadata/namespace"), field("/metadata/name"))
}

pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub fn objects_of_kind<'a>(objects: &'a [Value], wanted: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| kind(o) == wanted)
}

/// Parses `object` as `T` and checks that serializing it back gives the same
/// JSON: a field `T` does not know (a typo, a wrong level) is lost on the
/// way and reported with its path, as `kubectl apply`'s strict field
/// validation would reject it.
pub fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<()> {
    let typed: T =
        serde_json::from_value(object.clone()).with_context(|| format!("{} does not parse", describe(object)))?;
    let back = serde_json::to_value(&typed)?;
    match first_difference(object, &back, "") {
        None => Ok(()),
        Some(path) => {
            bail!("{}: field {path} is unknown or malformed (lost when parsed as the API type)", describe(object))
        }
    }
}

/// The path of the first place where `a` and `b` differ. Numbers compare by
/// value, so `1` and `1.0` are equal as they are to the API server.
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &format!("{path}.{k}")),
                _ => Some(format!("{path}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(if path.is_empty() { ".".to_owned() } else { path.to_owned() }),
    }
}

/// The reco CRDs of `crds/`, by kind.
pub fn reco_crds() -> BTreeMap<String, Value> {
    let mut crds = BTreeMap::new();
    for name in ["recommenderpipelines.reco.seed.dev.yaml", "modelversions.reco.seed.dev.yaml"] {
        let crd = parse_document(&read(&format!("crds/{name}"))).expect("crds/ holds valid YAML");
        let kind = crd["spec"]["names"]["kind"].as_str().expect("a CRD names its kind").to_owned();
        crds.insert(kind, crd);
    }
    crds
}

/// The OpenAPI schema of a CRD's only version.
pub fn openapi_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// Checks a custom resource as the API server would on create (or on update
/// from `old`): the structural schema with unknown fields rejected, then the
/// CEL rules after defaulting. Returns every problem found.
pub fn validate_custom_resource(crds: &BTreeMap<String, Value>, object: &Value, old: Option<&Value>) -> Vec<String> {
    let Some(crd) = crds.get(kind(object)) else {
        return vec![format!("{}: no reco CRD has this kind", describe(object))];
    };
    let schema = openapi_schema(crd);
    let mut problems = Vec::new();
    let expected_api_version = format!(
        "{}/{}",
        crd["spec"]["group"].as_str().unwrap_or_default(),
        crd["spec"]["versions"][0]["name"].as_str().unwrap_or_default()
    );
    if object["apiVersion"] != expected_api_version.as_str() {
        problems.push(format!("apiVersion must be {expected_api_version}"));
    }
    if let Err(e) = round_trip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&object["metadata"]) {
        problems.push(format!("metadata: {e:#}"));
    }
    let validator =
        jsonschema::validator_for(&strict_json_schema(schema, true)).expect("the CRD schema is valid JSON Schema");
    problems.extend(validator.iter_errors(object).map(|e| format!("schema: at {}: {e}", e.instance_path())));
    if let Err(errors) = kube::core::cel::Validator::new().validate(schema, object, old) {
        problems.extend(
            errors.as_slice().iter().map(|e| format!("CEL rule at {} ({}): {}", e.field_path, e.rule, e.message)),
        );
    }
    problems
}

/// Turns a CRD's OpenAPI v3 schema into JSON Schema that rejects what the API
/// server rejects or prunes: `nullable` becomes a `null` type, objects with
/// listed properties forbid others (the server prunes them, and `kubectl`'s
/// strict field validation refuses them), Kubernetes extensions are dropped.
/// At the root, `apiVersion`, `kind` and `metadata` are allowed as on every object.
pub fn strict_json_schema(schema: &Value, root: bool) -> Value {
    let Value::Object(map) = schema else { return schema.clone() };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "properties" => {
                let properties = value.as_object().into_iter().flatten();
                out.insert(
                    key.clone(),
                    Value::Object(properties.map(|(k, v)| (k.clone(), strict_json_schema(v, false))).collect()),
                );
            }
            "items" => {
                out.insert(key.clone(), strict_json_schema(value, false));
            }
            "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), strict_json_schema(value, false));
            }
            // Formats such as uint8 are Kubernetes' own; ranges carry the meaning.
            "nullable" | "format" => {}
            k if k.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = map.get("type")
    {
        out.insert("type".into(), json!([t, "null"]));
    }
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.insert("anyOf".into(), json!([{"type": "integer"}, {"type": "string"}]));
    }
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if root && let Some(Value::Object(properties)) = out.get_mut("properties") {
        properties.insert("apiVersion".into(), json!({"type": "string"}));
        properties.insert("kind".into(), json!({"type": "string"}));
        properties.insert("metadata".into(), json!({"type": "object"}));
    }
    Value::Object(out)
}

/// One CEL rule of a CRD schema and where it sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CelRule {
    /// Schema path such as `.spec.rollout.steps[]`.
    pub path: String,
    pub rule: String,
}

/// Every `x-kubernetes-validations` rule of a schema.
pub fn cel_rules(schema: &Value) -> BTreeSet<CelRule> {
    let mut rules = BTreeSet::new();
    walk_rules(schema, None, "", &mut rules);
    rules
}

/// The rules of `schema` that a real API server evaluates for `object`: those
/// on nodes where the object (after defaulting) has a value.
pub fn cel_rules_reached(schema: &Value, object: &Value) -> BTreeSet<CelRule> {
    let defaulted = kube::core::cel::apply_defaults(schema, object);
    let mut rules = BTreeSet::new();
    walk_rules(schema, Some(&defaulted), "", &mut rules);
    rules
}

fn walk_rules(schema: &Value, value: Option<&Value>, path: &str, rules: &mut BTreeSet<CelRule>) {
    if let (Some(Value::Array(validations)), true) =
        (schema.get("x-kubernetes-validations"), value.is_none_or(|v| !v.is_null()))
    {
        for validation in validations {
            let rule = validation["rule"].as_str().unwrap_or_default().to_owned();
            rules.insert(CelRule { path: if path.is_empty() { ".".into() } else { path.into() }, rule });
        }
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, child) in properties {
            match value {
                None => walk_rules(child, None, &format!("{path}.{name}"), rules),
                Some(v) => {
                    if let Some(child_value) = v.get(name) {
                        walk_rules(child, Some(child_value), &format!("{path}.{name}"), rules);
                    }
                }
            }
        }
    }
    if let Some(items) = schema.get("items") {
        match value {
            None => walk_rules(items, None, &format!("{path}[]"), rules),
            Some(v) => {
                for item in v.as_array().into_iter().flatten() {
                    walk_rules(items, Some(item), &format!("{path}[]"), rules);
                }
            }
        }
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        match value {
            None => walk_rules(additional, None, &format!("{path}.*"), rules),
            Some(v) => {
                for item in v.as_object().into_iter().flat_map(|m| m.values()) {
                    walk_rules(additional, Some(item), &format!("{path}.*"), rules);
                }
            }
        }
    }
}

/// One RBAC grant: API group, resource and the verbs allowed on it.
pub type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// The grants the operator needs, from `fixtures/operator-rbac.yaml`.
pub fn operator_grants() -> Grants {
    let fixture: Vec<Value> =
        serde_saphyr::from_str(&read("tests/packaging/fixtures/operator-rbac.yaml")).expect("fixture parses");
    let mut grants = Grants::new();
    for entry in fixture {
        let group = entry["group"].as_str().expect("group").to_owned();
        let resource = entry["resource"].as_str().expect("resource").to_owned();
        let verbs =
            entry["verbs"].as_array().expect("verbs").iter().map(|v| v.as_str().expect("verb").to_owned()).collect();
        assert!(grants.insert((group, resource), verbs).is_none(), "the fixture lists a resource twice");
    }
    grants
}

/// Adds the rules of a Role or ClusterRole to `grants`, refusing wildcards,
/// non-resource URLs and aggregation.
pub fn add_rules(grants: &mut Grants, role: &Value) -> Result<()> {
    ensure!(role.get("aggregationRule").is_none(), "{}: aggregated roles grant more than listed", describe(role));
    for rule in role["rules"].as_array().into_iter().flatten() {
        ensure!(rule.get("nonResourceURLs").is_none(), "{}: nonResourceURLs are not needed", describe(role));
        let strings = |field: &str| -> Result<Vec<String>> {
            let values = rule[field].as_array().ok_or_else(|| anyhow!("{}: a rule without {field}", describe(role)))?;
            let strings: Vec<String> = values.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            ensure!(!strings.iter().any(|s| s.contains('*')), "{}: wildcard in {field}: {strings:?}", describe(role));
            Ok(strings)
        };
        let verbs = strings("verbs")?;
        for group in strings("apiGroups")? {
            for resource in strings("resources")? {
                grants.entry((group.clone(), resource)).or_default().extend(verbs.iter().cloned());
            }
        }
    }
    Ok(())
}

/// The `reco_operator_*` metric names the operator exports, from
/// `fixtures/operator-metrics.yaml`, with the series a histogram adds.
pub fn operator_metric_series() -> BTreeSet<String> {
    let fixture: BTreeMap<String, Value> =
        serde_saphyr::from_str(&read("tests/packaging/fixtures/operator-metrics.yaml")).expect("fixture parses");
    let mut series = BTreeSet::new();
    for (name, spec) in fixture {
        if spec["type"] == "histogram" {
            series.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        } else {
            series.insert(name);
        }
    }
    series
}

/// The series of every metric docs/metrics.md names (a histogram's `_bucket`, `_sum` and
/// `_count` included): the services' metrics users may query.
pub fn documented_metric_series() -> BTreeSet<String> {
    let docs = read("docs/metrics.md");
    metric_names_in(&docs)
        .into_iter()
        .flat_map(|name| ["", "_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")))
        .collect()
}

/// The `reco_*` metric names a PromQL expression (or any text) uses.
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("reco_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
