{{/* Chart name, at most 63 characters (a DNS label). */}}
{{- define "reco.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the release's objects: the release name, with the chart name unless it already contains it. */}}
{{- define "reco.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "reco.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reco.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "reco.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "reco.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: reco
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "reco.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reco.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository:tag@digest when a digest is set. */}}
{{- define "reco.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The services image: repository:tag, or repository:tag@digest when a digest is set. */}}
{{- define "reco.servicesImage" -}}
{{- $tag := default .Chart.AppVersion .Values.servicesImage.tag }}
{{- if .Values.servicesImage.digest }}
{{- printf "%s:%s@%s" .Values.servicesImage.repository $tag .Values.servicesImage.digest }}
{{- else }}
{{- printf "%s:%s" .Values.servicesImage.repository $tag }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it manages: exactly the API
calls it makes (tests/packaging/fixtures/operator-rbac.yaml lists them).
Leases are separate: they live in the release namespace only.
*/}}
{{- define "reco.workloadRules" -}}
- apiGroups: ["reco.seed.dev"]
  resources: ["recommenderpipelines", "modelversions"]
  verbs: ["get", "list", "watch"]
# The operator writes status only, never a spec, so GitOps tools do not fight it.
- apiGroups: ["reco.seed.dev"]
  resources: ["recommenderpipelines/status", "modelversions/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The features StatefulSet: never deleted by the operator (garbage collection does).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Only to create each pipeline's default token Secret; the operator never reads one.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# The gateways' endpoints, to scrape each gateway pod's /metrics.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Fails when two operators could run at once or values contradict each other. */}}
{{- define "reco.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount: %d replicas need leaderElection.enabled=true, or they would reconcile the same pipelines at once" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.samplePipeline.enabled .Values.watchNamespaces (not (has .Release.Namespace .Values.watchNamespaces)) }}
{{- fail (printf "samplePipeline.enabled: the release namespace %q is not in watchNamespaces %v, so the operator would never reconcile the sample" .Release.Namespace .Values.watchNamespaces) }}
{{- end }}
{{- end }}
