{% raw %}{{/* Chart name. */}}
{{- define "{% endraw %}{{project-name}}{% raw %}.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "{% endraw %}{{project-name}}{% raw %}.fullname" -}}
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

{{- define "{% endraw %}{{project-name}}{% raw %}.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "{% endraw %}{{project-name}}{% raw %}.labels" -}}
helm.sh/chart: {{ include "{% endraw %}{{project-name}}{% raw %}.chart" . }}
{{ include "{% endraw %}{{project-name}}{% raw %}.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "{% endraw %}{{project-name}}{% raw %}.selectorLabels" -}}
app.kubernetes.io/name: {{ include "{% endraw %}{{project-name}}{% raw %}.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "{% endraw %}{{project-name}}{% raw %}.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "{% endraw %}{{project-name}}{% raw %}.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "{% endraw %}{{project-name}}{% raw %}.secretName" -}}
{{- default (printf "%s-urls" (include "{% endraw %}{{project-name}}{% raw %}.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{/*
The shutdown budget: the app drains for drainDelaySeconds, then gives in-flight work
timeoutSeconds; the kubelet must not SIGKILL before both are over.
*/}}
{{- define "{% endraw %}{{project-name}}{% raw %}.shutdownBudget" -}}
{{- add .Values.app.shutdown.drainDelaySeconds .Values.app.shutdown.timeoutSeconds .Values.terminationGraceMarginSeconds }}
{{- end }}

{{- define "{% endraw %}{{project-name}}{% raw %}.terminationGracePeriodSeconds" -}}
{{- $budget := include "{% endraw %}{{project-name}}{% raw %}.shutdownBudget" . | int }}
{{- $explicit := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $explicit }}
{{- $budget }}
{{- else if lt (int $explicit) $budget }}
{{- fail (printf "terminationGracePeriodSeconds=%d is below the shutdown budget of %d s (app.shutdown.drainDelaySeconds %d + app.shutdown.timeoutSeconds %d + terminationGraceMarginSeconds %d): the kubelet would SIGKILL the pod while it still drains requests. Raise it or leave it empty to derive it." (int $explicit) $budget (int .Values.app.shutdown.drainDelaySeconds) (int .Values.app.shutdown.timeoutSeconds) (int .Values.terminationGraceMarginSeconds)) }}
{{- else }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* The startup budget must cover the app's own deadline. */}}
{{- define "{% endraw %}{{project-name}}{% raw %}.checkStartupBudget" -}}
{{- $budget := mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold | add .Values.probes.startup.initialDelaySeconds }}
{{- if lt (int $budget) (int .Values.app.startup.deadlineSeconds) }}
{{- fail (printf "the startup probe budget (initialDelaySeconds + periodSeconds x failureThreshold = %d s) is shorter than app.startup.deadlineSeconds (%d s): Kubernetes would restart the pod before the app reports which dependency blocks it." (int $budget) (int .Values.app.startup.deadlineSeconds)) }}
{{- end }}
{{- end }}
{% endraw %}