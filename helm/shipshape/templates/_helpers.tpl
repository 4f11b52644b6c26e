{{/* Chart name. */}}
{{- define "shipshape.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "shipshape.fullname" -}}
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

{{- define "shipshape.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object: the standard ones plus commonLabels. */}}
{{- define "shipshape.labels" -}}
helm.sh/chart: {{ include "shipshape.chart" . }}
{{ include "shipshape.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "shipshape.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shipshape.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
metadata.annotations of an object (commonAnnotations merged with the object's own), with its
leading newline and indentation: nothing at all when there are none.
Usage: {{- include "shipshape.annotations" (dict "context" $ "own" .Values.service.annotations) }}
*/}}
{{- define "shipshape.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .own)) (default (dict) .context.Values.commonAnnotations) }}
{{- with $all }}
{{ toYaml (dict "annotations" .) | indent 2 }}
{{- end }}
{{- end }}

{{- define "shipshape.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shipshape.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference with global.imageRegistry applied: the registry host of `repository` (its
first segment when that has a dot or a colon, or is localhost) is replaced; a repository without
one gets the registry in front.
*/}}
{{- define "shipshape.withRegistry" -}}
{{- $repository := .repository }}
{{- with .global.imageRegistry }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq "localhost" $first)) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- $repository }}
{{- end }}

{{/*
The service image. The digest the release workflow writes belongs to the appVersion tag: it is
used with that tag only, so `--set image.tag=X` on a released chart deploys X.
*/}}
{{- define "shipshape.image" -}}
{{- $repository := include "shipshape.withRegistry" (dict "repository" .Values.image.repository "global" (default (dict) .Values.global)) }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if and .Values.image.digest (eq $tag (toString .Chart.AppVersion)) }}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of the pod (the chart's own plus global ones, as {name}), with its leading newline; indent with "indent". */}}
{{- define "shipshape.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat (default (list) .context.Values.imagePullSecrets) (default (list) (.context.Values.global).imagePullSecrets) }}
{{- if kindIs "string" . }}
{{- $secrets = append $secrets (dict "name" .) }}
{{- else }}
{{- $secrets = append $secrets (dict "name" .name) }}
{{- end }}
{{- end }}
{{- with uniq $secrets }}
{{ toYaml (dict "imagePullSecrets" .) | indent $.indent }}
{{- end }}
{{- end }}

{{/* Name of the Secret the chart creates for inline URLs. */}}
{{- define "shipshape.urlSecretName" -}}
{{- printf "%s-urls" (include "shipshape.fullname" .) }}
{{- end }}

{{/*
The Secret reference of one URL: the existing Secret as it is, else the chart's own; neither a
URL nor an existing Secret fails the render naming the values to set.
Usage: include "shipshape.urlRef" (dict "context" $ "values" .Values.database "name" "database" "key" "database-url")
*/}}
{{- define "shipshape.urlRef" -}}
{{- if .values.existingSecret }}
name: {{ tpl .values.existingSecret .context }}
key: {{ .values.existingSecretKey | default .key }}
{{- else if .values.url }}
name: {{ include "shipshape.urlSecretName" .context }}
key: {{ .key }}
{{- else }}
{{- fail (printf "%s: set %s.url (a Secret is created from it) or %s.existingSecret (the name of a Secret in the release namespace holding the URL under %s.existingSecretKey, default %q)" .name .name .name .name .key) }}
{{- end }}
{{- end }}

{{/*
The dependencies the service connects to, as a YAML list: each is a values section with `url`,
`existingSecret`, `existingSecretKey` and `tls.caBundle`. Read it with `fromYamlArray`.
*/}}
{{- define "shipshape.dependencies" -}}
- database
- rabbitmq {{- /* @rabbitmq */}}
{{- end }}

{{/*
The CA bundles that are set, as YAML: {<dependency>: <caBundle>}, each only when its secretName
or configMapName is given. Read it with `fromYaml`.
*/}}
{{- define "shipshape.caBundles" -}}
{{- $set := dict }}
{{- range $dependency := include "shipshape.dependencies" . | fromYamlArray }}
{{- $ca := ((index $.Values $dependency).tls).caBundle | default dict }}
{{- if or $ca.secretName $ca.configMapName }}
{{- $_ := set $set $dependency $ca }}
{{- end }}
{{- end }}
{{- toYaml $set }}
{{- end }}

{{/*
The app's settings (APP__* and the like) as a YAML map: the ConfigMap's data, and the env of the
migration Job, which runs before the ConfigMap of its release exists.
*/}}
{{- define "shipshape.settings" -}}
APP_ENV: {{ .Values.app.env | quote }}
RUST_LOG: {{ .Values.app.logLevel | quote }}
APP__SERVICE__NAME: {{ include "shipshape.name" . | quote }}
APP__SERVER__PORT: {{ .Values.app.ports.api | quote }}
APP__MANAGEMENT__PORT: {{ .Values.app.ports.management | quote }}
APP__MANAGEMENT__WORKERS: {{ .Values.app.managementWorkers | quote }}
APP__SERVER__WORKERS: {{ .Values.app.server.workers | quote }}
APP__SERVER__BODY_TIMEOUT: "{{ .Values.app.server.bodyTimeoutSeconds }}s"
APP__SERVER__MAX_CONNECTIONS: {{ .Values.app.server.maxConnections | quote }}
APP__SERVER__MAX_IN_FLIGHT: {{ .Values.app.server.maxInFlight | quote }}
APP__SERVER__TRUSTED_PROXIES: {{ join "," .Values.app.server.trustedProxies | quote }}
APP__DATABASE__MAX_CONNECTIONS: {{ .Values.app.database.maxConnections | quote }}
APP__DATABASE__QUERY_TIMEOUT: "{{ .Values.app.database.queryTimeoutSeconds }}s"
{{- /* @rabbitmq-begin */}}
APP__OUTBOX__PUBLISHERS: {{ .Values.app.outbox.publishers | quote }}
APP__RABBITMQ__CONSUMERS: {{ .Values.app.rabbitmq.consumers | quote }}
{{- /* @rabbitmq-end */}}
APP__MIGRATIONS__AT_STARTUP: {{ eq .Values.migrations.mode "startup" | quote }}
APP__MIGRATIONS__LOCK_TIMEOUT: "{{ .Values.migrations.lockTimeoutSeconds }}s"
APP__MIGRATIONS__STATEMENT_TIMEOUT: "{{ .Values.migrations.statementTimeoutSeconds }}s"
APP__STARTUP__DEADLINE: "{{ .Values.app.startup.deadlineSeconds }}s"
APP__SHUTDOWN__DRAIN_DELAY: "{{ .Values.app.shutdown.drainDelaySeconds }}s"
APP__SHUTDOWN__TIMEOUT: "{{ .Values.app.shutdown.timeoutSeconds }}s"
{{- /* The CA bundles the deployment mounts (<dependency>.tls.caBundle, see shipshape.caBundles). */}}
{{- range $dependency, $ca := include "shipshape.caBundles" . | fromYaml }}
APP__{{ upper $dependency }}__CA_FILE: {{ printf "%s/ca.crt" (include "shipshape.caDir" $dependency) | quote }}
{{- end }}
{{- range $check, $tuning := .Values.app.health }}
APP__HEALTH__{{ upper $check }}__INTERVAL: "{{ $tuning.intervalSeconds }}s"
APP__HEALTH__{{ upper $check }}__TIMEOUT: "{{ $tuning.timeoutSeconds }}s"
APP__HEALTH__{{ upper $check }}__FAILURE_THRESHOLD: {{ $tuning.failureThreshold | quote }}
APP__HEALTH__{{ upper $check }}__SUCCESS_THRESHOLD: {{ $tuning.successThreshold | quote }}
APP__HEALTH__{{ upper $check }}__CRITICAL: {{ $tuning.critical | quote }}
{{- end }}
{{- range $key, $value := .Values.app.extraEnv }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* volumeMounts of the CA bundles that are set (the pods' and the migration Job's). */}}
{{- define "shipshape.caVolumeMounts" -}}
{{- range $dependency, $ca := include "shipshape.caBundles" . | fromYaml }}
# APP__{{ upper $dependency }}__CA_FILE names ca.crt in here.
- name: {{ $dependency }}-ca
  mountPath: {{ include "shipshape.caDir" $dependency }}
  readOnly: true
{{- end }}
{{- end }}

{{/* volumes of the CA bundles that are set: only the key, as ca.crt, read-only for everyone (defaultMode 292 = 0444). */}}
{{- define "shipshape.caVolumes" -}}
{{- range $dependency, $ca := include "shipshape.caBundles" . | fromYaml }}
- name: {{ $dependency }}-ca
  {{- if $ca.secretName }}
  secret:
    secretName: {{ tpl $ca.secretName $ }}
  {{- else }}
  configMap:
    name: {{ tpl $ca.configMapName $ }}
  {{- end }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
    defaultMode: 292
{{- end }}
{{- end }}

{{/* Egress rules of the pods and of the migration Job (networkPolicy.egress). */}}
{{- define "shipshape.egressRules" -}}
{{- if .Values.networkPolicy.egress.dns }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- /* @rabbitmq-begin */}}
# PostgreSQL and RabbitMQ.
{{- /* @rabbitmq-else
# PostgreSQL.
@rabbitmq-end */}}
- ports:
    {{- range .Values.networkPolicy.egress.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.egress.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .Values.networkPolicy.egress.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the migration Job's objects: not the pods' selector labels, so no Service, PodDisruptionBudget or NetworkPolicy of the pods selects its pod. */}}
{{- define "shipshape.migrationSelectorLabels" -}}
app.kubernetes.io/name: {{ include "shipshape.name" . }}-migrate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migration
{{- end }}

{{- define "shipshape.migrationLabels" -}}
helm.sh/chart: {{ include "shipshape.chart" . }}
{{ include "shipshape.migrationSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Directory where the CA bundle of a dependency (see shipshape.dependencies) is mounted; the file in it is ca.crt. */}}
{{- define "shipshape.caDir" -}}
{{- printf "/etc/shipshape/tls/%s" . }}
{{- end }}

{{/* True when the chart creates the URL Secret (some URL given inline, not from a Secret). */}}
{{- define "shipshape.createsUrlSecret" -}}
{{- range $dependency := include "shipshape.dependencies" . | fromYamlArray }}
{{- $values := index $.Values $dependency }}
{{- if and $values.url (not $values.existingSecret) }}true{{- end }}
{{- end }}
{{- end }}

{{/*
The shutdown budget: the app drains for drainDelaySeconds, then everything else shares
timeoutSeconds; the kubelet must not SIGKILL before both are over.
*/}}
{{- define "shipshape.shutdownBudget" -}}
{{- add .Values.app.shutdown.drainDelaySeconds .Values.app.shutdown.timeoutSeconds .Values.terminationGraceMarginSeconds }}
{{- end }}

{{- define "shipshape.terminationGracePeriodSeconds" -}}
{{- $budget := include "shipshape.shutdownBudget" . | int }}
{{- $explicit := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $explicit }}
{{- $budget }}
{{- else if lt (int $explicit) $budget }}
{{- fail (printf "terminationGracePeriodSeconds=%d is below the shutdown budget of %d s (app.shutdown.drainDelaySeconds %d + app.shutdown.timeoutSeconds %d + terminationGraceMarginSeconds %d): the kubelet would SIGKILL the pod while it still drains requests. Raise it or leave it empty to derive it." (int $explicit) $budget (int .Values.app.shutdown.drainDelaySeconds) (int .Values.app.shutdown.timeoutSeconds) (int .Values.terminationGraceMarginSeconds)) }}
{{- else }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* The pod security context, adapted to OpenShift's restricted SCC when asked or detected. */}}
{{- define "shipshape.adaptSecurityContext" -}}
{{- $mode := ((((.context.Values.global).compatibility).openshift).adaptSecurityContext) | default "auto" }}
{{- $openshift := or (eq $mode "force") (and (eq $mode "auto") (.context.Capabilities.APIVersions.Has "security.openshift.io/v1")) }}
{{- $securityContext := deepCopy .securityContext }}
{{- if $openshift }}
{{- $securityContext = omit $securityContext "runAsUser" "runAsGroup" "fsGroup" "seLinuxOptions" }}
{{- end }}
{{- toYaml $securityContext }}
{{- end }}

{{/* Refusals: settings that render but would break the release. */}}
{{- define "shipshape.validate" -}}
{{- $budget := mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold | add .Values.probes.startup.initialDelaySeconds }}
{{- if lt (int $budget) (int .Values.app.startup.deadlineSeconds) }}
{{- fail (printf "the startup probe budget (initialDelaySeconds + periodSeconds x failureThreshold = %d s) is shorter than app.startup.deadlineSeconds (%d s): Kubernetes would restart the pod before the app reports which dependency blocks it." (int $budget) (int .Values.app.startup.deadlineSeconds)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- range $check, $tuning := .Values.app.health }}
{{- if gt (int $tuning.timeoutSeconds) (int $tuning.intervalSeconds) }}
{{- fail (printf "app.health.%s: timeoutSeconds (%d) must not exceed intervalSeconds (%d): the app refuses it (exit 2)" $check (int $tuning.timeoutSeconds) (int $tuning.intervalSeconds)) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- range $dependency := include "shipshape.dependencies" . | fromYamlArray }}
{{- $values := index $.Values $dependency }}
{{- $ca := ($values.tls).caBundle | default dict }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail (printf "%s.tls.caBundle: set secretName (%q) or configMapName (%q), not both" $dependency $ca.secretName $ca.configMapName) }}
{{- end }}
{{- /* Only an inline URL can be read here; one in existingSecret is checked by the app (exit 2). */}}
{{- if and (or $ca.secretName $ca.configMapName) $values.url (not $values.existingSecret) }}
{{- if and (eq $dependency "database") (regexMatch "[?&]sslmode=disable(&|#|$)" $values.url) }}
{{- fail "database.tls.caBundle is set but database.url has sslmode=disable (TLS off): the app refuses a CA file without TLS (exit 2). Use sslmode=verify-full, or unset database.tls.caBundle." }}
{{- end }}
{{- /* @rabbitmq-begin */}}
{{- if and (eq $dependency "rabbitmq") (hasPrefix "amqp://" $values.url) }}
{{- fail "rabbitmq.tls.caBundle is set but rabbitmq.url is amqp:// (no TLS): the app refuses a CA file without TLS (exit 2). Use an amqps:// URL (port 5671), or unset rabbitmq.tls.caBundle." }}
{{- end }}
{{- /* @rabbitmq-end */}}
{{- end }}
{{- end }}
{{- /* PostgreSQL connections at the peak of a rollout: the replicas (the HPA's maximum when it is
     on), the surge pods, and the old pods that still hold their connections while they drain; each
     holds up to app.database.maxConnections (requests, background work and the check: the app
     derives the split). Plus what connects from outside the pods (a migration run, a psql). */}}
{{- $hpa := .Values.autoscaling.enabled }}
{{- $replicas := ternary .Values.autoscaling.maxReplicas .Values.replicaCount $hpa | int }}
{{- /* As the Deployment controller resolves them: a percentage of the replicas, maxSurge
     rounded up, maxUnavailable down. */}}
{{- $surgeValue := .Values.strategy.maxSurge }}
{{- $surge := $surgeValue | int }}
{{- $surgeLabel := printf "%d" $surge }}
{{- if kindIs "string" $surgeValue }}
{{- $surge = ceil (divf (mulf (trimSuffix "%" $surgeValue | float64) $replicas) 100) | int }}
{{- $surgeLabel = printf "%s = %d" $surgeValue $surge }}
{{- end }}
{{- $unavailableValue := .Values.strategy.maxUnavailable }}
{{- $unavailable := $unavailableValue | int }}
{{- if kindIs "string" $unavailableValue }}
{{- $unavailable = floor (divf (mulf (trimSuffix "%" $unavailableValue | float64) $replicas) 100) | int }}
{{- end }}
{{- if and (eq $surge 0) (eq $unavailable 0) }}
{{- fail (printf "strategy: maxSurge and maxUnavailable are both 0 for %d replicas (%v and %v): a rollout could never replace a pod. Set maxSurge to 1 (or more)." $replicas $surgeValue $unavailableValue) }}
{{- end }}
{{- /* An old pod holds its connections while it drains (drainDelaySeconds, then about a second
     to stop); the next old pod is stopped once a new one has been ready for minReadySeconds.
     A drain longer than that has several old pods draining at once. */}}
{{- $drain := .Values.app.shutdown.drainDelaySeconds | int }}
{{- $minReady := .Values.minReadySeconds | int }}
{{- $draining := min $replicas (max 1 (ceil (divf (add $drain 1) (max $minReady 1)))) | int }}
{{- $pods := add $replicas $surge $draining | int }}
{{- $perPod := .Values.app.database.maxConnections | int }}
{{- $reserved := .Values.database.reservedConnections | int }}
{{- /* The migration Job's one connection: a pre-upgrade hook runs beside the old pods. */}}
{{- $job := ternary 1 0 (eq .Values.migrations.mode "job") | int }}
{{- $peak := add (mul $pods $perPod) $reserved $job | int }}
{{- $allowed := .Values.database.maxConnections | int }}
{{- if gt $peak $allowed }}
{{- fail (printf "PostgreSQL connections: (%s %d + strategy.maxSurge %s + %d draining: an old pod drains for app.shutdown.drainDelaySeconds %d s + 1 s, the next one stops after minReadySeconds %d s) = %d pods x app.database.maxConnections %d + database.reservedConnections %d%s = %d exceeds database.maxConnections (%d), the connections the server allows this service. Lower app.database.maxConnections, %s or strategy.maxSurge, raise minReadySeconds above the drain, or raise max_connections on the server and database.maxConnections here (or put PgBouncer in front: docs/deploy.md)." (ternary "autoscaling.maxReplicas" "replicaCount" $hpa) $replicas $surgeLabel $draining $drain $minReady $pods $perPod $reserved (ternary " + 1 migration Job" "" (eq $job 1)) $peak $allowed (ternary "autoscaling.maxReplicas" "replicaCount" $hpa)) }}
{{- end }}
{{- end }}
