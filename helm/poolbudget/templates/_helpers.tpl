{{/*
The chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "poolbudget.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name: the release name, plus the chart name unless the release name already has it.
*/}}
{{- define "poolbudget.fullname" -}}
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
The namespace of every namespaced object: namespaceOverride, else the release's.
*/}}
{{- define "poolbudget.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "poolbudget.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object the chart renders (not on the operator's pods: see poolbudget.podLabels).
*/}}
{{- define "poolbudget.labels" -}}
helm.sh/chart: {{ include "poolbudget.chart" . }}
{{ include "poolbudget.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: poolbudget
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods (immutable once the Deployment exists).
*/}}
{{- define "poolbudget.selectorLabels" -}}
app.kubernetes.io/name: {{ include "poolbudget.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on the operator's pods: the selector labels and podLabels, nothing that changes with the chart's
version or appVersion, so that a chart upgrade that changes nothing about the operator restarts nothing.
*/}}
{{- define "poolbudget.podLabels" -}}
{{ include "poolbudget.selectorLabels" . }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "poolbudget.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "poolbudget.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image, tagged with the chart's appVersion unless a tag or digest is given.
*/}}
{{- define "poolbudget.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether the operator runs standalone (one replica, no peering) or as kopf peers.
*/}}
{{- define "poolbudget.standalone" -}}
{{- if le (int .Values.replicaCount) 1 }}true{{- end }}
{{- end }}
