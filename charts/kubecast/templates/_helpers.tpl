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
