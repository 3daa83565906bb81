{{/*
Expand the name of the chart.
*/}}
{{- define "memwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "memwatch.fullname" -}}
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

{{/*
The agent's resource names: the full name plus "-agent", kept within 63 chars.
*/}}
{{- define "memwatch.agent.fullname" -}}
{{- printf "%s-agent" (include "memwatch.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
The metrics Services' names, kept within 63 chars and distinct.
*/}}
{{- define "memwatch.metricsServiceName" -}}
{{- printf "%s-metrics" (include "memwatch.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "memwatch.agent.metricsServiceName" -}}
{{- printf "%s-agent-metrics" (include "memwatch.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "memwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of every object of the release.
*/}}
{{- define "memwatch.labels" -}}
helm.sh/chart: {{ include "memwatch.chart" . }}
{{ include "memwatch.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: every pod of the release (controller and agent) carries them,
which is what `--self-selector` matches so that memwatch never acts on itself.
*/}}
{{- define "memwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "memwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels: the controller's and the agent's selectors differ by
app.kubernetes.io/component.
*/}}
{{- define "memwatch.controller.labels" -}}
{{ include "memwatch.labels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "memwatch.controller.selectorLabels" -}}
{{ include "memwatch.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "memwatch.agent.labels" -}}
{{ include "memwatch.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "memwatch.agent.selectorLabels" -}}
{{ include "memwatch.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
The label selector of this release's agent pods, passed to the controller as --agent-selector.
*/}}
{{- define "memwatch.agentSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" (include "memwatch.name" .) .Release.Name }}
{{- end }}

{{/*
The label selector of memwatch's own pods, passed as --self-selector.
*/}}
{{- define "memwatch.selfSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (include "memwatch.name" .) .Release.Name }}
{{- end }}

{{/*
Service account names.
*/}}
{{- define "memwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "memwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "memwatch.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "memwatch.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "memwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The name of the leader-election Lease: one per release, so that two releases
in one namespace do not fight over it.
*/}}
{{- define "memwatch.leaseName" -}}
{{- include "memwatch.fullname" . }}
{{- end }}

{{/*
Whether memwatch may delete pods (non-empty means yes): for escalation past a
blocking PodDisruptionBudget, for a default action of delete, or when asked
for explicitly (pods annotated memwatch.io/action: delete).
*/}}
{{- define "memwatch.canDelete" -}}
{{- if or .Values.rbac.allowDelete .Values.eviction.escalate (eq .Values.defaultPolicy.action "delete") }}true{{ end }}
{{- end }}

{{/*
Which usage sources the controller may read (non-empty means yes).
*/}}
{{- define "memwatch.usesMetricsAPI" -}}
{{- if has .Values.source (list "auto" "metrics-api") }}true{{ end }}
{{- end }}

{{- define "memwatch.usesKubelet" -}}
{{- if has .Values.source (list "auto" "kubelet") }}true{{ end }}
{{- end }}

{{/*
RBAC rules on pods and Events, in the watched namespaces: the same for the
controller and the agent (the agent's without the act rules when
agent.evict is false).
*/}}
{{- define "memwatch.podRules" -}}
{{ include "memwatch.podReadRules" . }}
{{ include "memwatch.podActRules" . }}
{{ include "memwatch.eventRules" . }}
{{- end }}

{{- define "memwatch.podReadRules" -}}
# Find the pods to watch: a list, then a watch; get before acting.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{- define "memwatch.podActRules" -}}
# Act: the Eviction API, which respects PodDisruptionBudgets.
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
{{- if include "memwatch.canDelete" . }}
# Delete a pod: escalation past a blocking PodDisruptionBudget, or a pod
# annotated memwatch.io/action: delete (rbac.allowDelete, eviction.escalate,
# defaultPolicy.action: delete).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete"]
{{- end }}
{{- end }}

{{- define "memwatch.eventRules" -}}
# Record each decision as an Event on the pod (patch: repeated Events are
# counted, not duplicated); list and watch memwatch's own Events (field
# selector source=memwatch) so that a restart, another replica or the other
# component never acts twice on one pod.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list", "watch"]
{{- end }}

{{/*
The agent's rules: with agent.evict false it reads pods and records Events,
and can neither evict nor delete (it kills in place, on its own node only).
*/}}
{{- define "memwatch.agent.rules" -}}
{{- if .Values.agent.evict }}
{{ include "memwatch.podRules" . }}
{{- else }}
{{ include "memwatch.podReadRules" . }}
# agent.evict is false: no pods/eviction, no pods delete.
{{ include "memwatch.eventRules" . }}
{{- end }}
{{- end }}

{{/*
The kubelet CA bundle's path in the controller container (kubelet.caBundle).
*/}}
{{- define "memwatch.kubeletCAPath" -}}
/etc/memwatch/kubelet-ca/ca.crt
{{- end }}

{{- define "memwatch.kubeletCAName" -}}
{{- printf "%s-kubelet-ca" (include "memwatch.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
The controller's namespaced rules: podRules plus the metrics API.
*/}}
{{- define "memwatch.controller.rules" -}}
{{ include "memwatch.podRules" . }}
{{- if include "memwatch.usesMetricsAPI" . }}
# source metrics-api or auto: pod usage from metrics-server.
- apiGroups: ["metrics.k8s.io"]
  resources: ["pods"]
  verbs: ["get", "list"]
{{- end }}
{{- end }}

{{/*
Flags shared by `memwatch run` and `memwatch agent`, one list item each.
*/}}
{{- define "memwatch.sharedArgs" -}}
{{- range .Values.namespaces }}
- {{ printf "--namespace=%s" . | quote }}
{{- else }}
- --all-namespaces
{{- end }}
{{- range .Values.excludeNamespaces }}
- {{ printf "--exclude-namespace=%s" . | quote }}
{{- end }}
{{- with .Values.labelSelector }}
- {{ printf "--label-selector=%s" . | quote }}
{{- end }}
- {{ printf "--self-selector=%s" (include "memwatch.selfSelector" .) | quote }}
{{- range .Values.protection.namespaces }}
- {{ printf "--protected-namespace=%s" . | quote }}
{{- end }}
{{- range .Values.protection.allowNamespaces }}
- {{ printf "--allow-namespace=%s" . | quote }}
{{- end }}
- {{ printf "--protected-priority=%d" (int64 .Values.protection.priority) | quote }}
{{- if .Values.dryRun }}
- --dry-run
{{- end }}
- {{ printf "--default-action=%s" .Values.defaultPolicy.action | quote }}
{{- if not (kindIs "invalid" .Values.defaultPolicy.gracePeriod) }}
- {{ printf "--default-grace-period=%d" (int64 .Values.defaultPolicy.gracePeriod) | quote }}
{{- end }}
- {{ printf "--default-for=%s" .Values.defaultPolicy.for | quote }}
- {{ printf "--default-restart-budget=%s" .Values.defaultPolicy.restartBudget | quote }}
- {{ printf "--default-min-pod-age=%s" .Values.defaultPolicy.minPodAge | quote }}
{{- if .Values.eviction.escalate }}
- --escalate
{{- end }}
- {{ printf "--escalation-timeout=%s" .Values.eviction.escalationTimeout | quote }}
- {{ printf "--metrics-port=%d" (int64 .Values.metrics.port) | quote }}
- {{ printf "--liveness=http://0.0.0.0:%d/healthz" (int64 .Values.liveness.port) | quote }}
{{- if .Values.verbose }}
- --verbose
{{- end }}
{{- if ne .Values.logFormat "text" }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
{{- end }}
{{- end }}

{{/*
Env shared by both pods: the pod's own name and namespace (downward API).
*/}}
{{- define "memwatch.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
Container ports and the liveness probe, shared by both pods.
*/}}
{{- define "memwatch.ports" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
- name: liveness
  containerPort: {{ .Values.liveness.port }}
  protocol: TCP
{{- end }}

{{- define "memwatch.livenessProbe" -}}
# kopf's liveness endpoint: it stops answering when the operator's event loop
# is stuck, and the kubelet restarts the container.
livenessProbe:
  httpGet:
    path: /healthz
    port: liveness
  {{- toYaml .Values.liveness.probe | nindent 2 }}
# No readinessProbe: an operator serves no traffic, so there is nothing to
# hold back from a Service until it is ready (the metrics Service is scraped
# regardless).
{{- end }}
