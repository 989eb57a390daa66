{{/* Names ------------------------------------------------------------------ */}}

{{- define "kubecast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: "<release>-kubecast", or the release
name alone when it already says kubecast. Truncated to leave room for suffixes.
*/}}
{{- define "kubecast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubecast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubecast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The leader-election Lease. Its name is fixed in the operator (leader.py), so
it lives in the release namespace, which the operator reads from POD_NAMESPACE.
*/}}
{{- define "kubecast.leaseName" -}}kubecast-operator{{- end }}

{{/* The Secret with the stop-token signing key: the user's, or the chart's. */}}
{{- define "kubecast.signingKeySecret" -}}
{{- .Values.operator.signingKey.existingSecret | default (printf "%s-signing-key" (include "kubecast.fullname" .)) }}
{{- end }}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "kubecast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubecast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubecast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of everything the release makes. */}}
{{- define "kubecast.commonLabels" -}}
helm.sh/chart: {{ include "kubecast.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubecast
{{- end }}

{{/* Labels of the operator's own objects. */}}
{{- define "kubecast.labels" -}}
{{ include "kubecast.commonLabels" . }}
app.kubernetes.io/name: {{ include "kubecast.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Images ----------------------------------------------------------------- */}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "kubecast.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Scheduling ------------------------------------------------------------- */}}

{{/*
The pod's affinity: the user's, or with more than one replica a preferred
anti-affinity per node, so that one node going away leaves a standby. Only
preferred: a single-node cluster (kind, k3d) still runs every replica.
*/}}
{{- define "kubecast.affinity" -}}
{{- if .Values.affinity }}
{{- toYaml .Values.affinity }}
{{- else if gt (int .Values.replicaCount) 1 }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kubecast.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}

{{/*
podDisruptionBudget.minAvailable when it is set ("" and null are not; 0 is),
else nothing.
*/}}
{{- define "kubecast.pdbMinAvailable" -}}
{{- $min := .Values.podDisruptionBudget.minAvailable }}
{{- if not (or (kindIs "invalid" $min) (eq (toString $min) "")) }}
{{- toString $min }}
{{- end }}
{{- end }}

{{/* An int or a percentage, as YAML: numbers bare, percentages quoted. */}}
{{- define "kubecast.intOrPercent" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/*
A budget that no eviction can ever meet blocks every `kubectl drain` (and
managed node upgrades) of a node running the operator: refuse it.
*/}}
{{- define "kubecast.validatePdb" -}}
{{- $pdb := .Values.podDisruptionBudget }}
{{- $replicas := int .Values.replicaCount }}
{{- $min := include "kubecast.pdbMinAvailable" . }}
{{- if $min }}
{{- $need := 0 }}
{{- if hasSuffix "%" $min }}
{{- $need = ceil (divf (mul (trimSuffix "%" $min | int) $replicas) 100) | int }}
{{- else }}
{{- $need = int $min }}
{{- end }}
{{- if and (gt $replicas 0) (ge $need $replicas) }}
{{- fail (printf "podDisruptionBudget.minAvailable=%s with replicaCount=%d would keep every operator pod from being evicted, so a node drain could never finish: use podDisruptionBudget.maxUnavailable (default 1), or raise replicaCount" $min $replicas) }}
{{- end }}
{{- else }}
{{- $max := $pdb.maxUnavailable }}
{{- if or (kindIs "invalid" $max) (eq (toString $max) "") }}
{{- fail "podDisruptionBudget.enabled=true needs podDisruptionBudget.maxUnavailable or podDisruptionBudget.minAvailable" }}
{{- end }}
{{- if eq (trimSuffix "%" (toString $max) | int) 0 }}
{{- fail (printf "podDisruptionBudget.maxUnavailable=%v would keep every operator pod from being evicted, so a node drain could never finish: use 1 (the default) or more" $max) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Checks the schema cannot express, with what to do about them. */}}
{{- define "kubecast.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection) }}
{{- fail "replicaCount > 1 needs operator.leaderElection=true: without the Lease every replica would reconcile every stream" }}
{{- end }}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) }}
{{- fail "operator.metricsPort and operator.healthPort must differ" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true: the ServiceMonitor selects that Service" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) .Values.rbac.create }}
{{- fail "serviceAccount.create=false needs serviceAccount.name: rbac.create would otherwise grant the operator's rights to the namespace's default ServiceAccount" }}
{{- end }}
{{- end }}

{{/*
Switches added after 0.1.0 ("true" or nothing). NB: `helm upgrade --reuse-values`
reuses the old release's values as they were, without the keys a newer chart
added, so a missing key means its default here rather than a nil pointer.
*/}}
{{- define "kubecast.crdsEnabled" -}}
{{- $crds := .Values.crds | default dict }}
{{- if or (not (hasKey $crds "enabled")) $crds.enabled }}true{{ end }}
{{- end }}

{{- define "kubecast.crdsKeep" -}}
{{- $crds := .Values.crds | default dict }}
{{- if or (not (hasKey $crds "keep")) $crds.keep }}true{{ end }}
{{- end }}

{{- define "kubecast.admissionPolicy" -}}
{{- if and .Values.rbac.create (or (not (hasKey .Values.rbac "admissionPolicy")) .Values.rbac.admissionPolicy) }}true{{ end }}
{{- end }}
