{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "infra-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "infra-service.fullname" -}}
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

{{- define "infra-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Recommended labels on every object. */}}
{{- define "infra-service.labels" -}}
helm.sh/chart: {{ include "infra-service.chart" . }}
{{ include "infra-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: infra-service
{{- end }}

{{- define "infra-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infra-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "infra-service.dispatcherSelectorLabels" -}}
{{ include "infra-service.selectorLabels" . }}
app.kubernetes.io/component: dispatcher
{{- end }}

{{/* Labels of one `helm test` pod, given (dict "root" . "check" "dispatcher"|"redis"|"postgres"):
each check has a NetworkPolicy of its own that selects it alone. */}}
{{- define "infra-service.helmTestSelectorLabels" -}}
{{ include "infra-service.selectorLabels" .root }}
app.kubernetes.io/component: test
infra-service.io/helm-test: {{ .check }}
{{- end }}

{{/* Labels the dispatcher puts on runner Jobs and pods (dispatcher/naming.py). */}}
{{- define "infra-service.runnerSelectorLabels" -}}
app.kubernetes.io/name: infra-service-runner
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: infra-service-dispatcher
{{- end }}

{{- define "infra-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "infra-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "infra-service.runnerServiceAccountName" -}}
{{- if .Values.runner.serviceAccount.create }}
{{- default (printf "%s-runner" (include "infra-service.shortname" .)) .Values.runner.serviceAccount.name }}
{{- else }}
{{- .Values.runner.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret every secret reference falls back to. */}}
{{- define "infra-service.secretName" -}}
{{- default (include "infra-service.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "infra-service.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Secret references of the runner as the dispatcher reads them (DISPATCHER_JOB_SECRET_ENV):
{"ENV": {"secret": name, "key": key, "optional": bool}}. An optional entry with an empty key
is left out; a required one is kept, so that the dispatcher refuses it at start (the schema
refuses it first, unless skipped).
*/}}
{{- define "infra-service.runnerSecretEnv" -}}
{{- $default := include "infra-service.secretName" . }}
{{- $refs := dict
  "REDIS_PASSWORD" .Values.redis.password
  "DATABASE_PASSWORD" .Values.database.password
  "CREDENTIALS_KEY" .Values.database.credentialsKey
  "SSH_PRIVATE_KEY" .Values.runner.sshPrivateKey
  "PROVIDER_API_USERNAME" .Values.runner.provider.username
  "PROVIDER_API_PASSWORD" .Values.runner.provider.password }}
{{- $refs = merge (deepCopy .Values.runner.secretEnv) $refs }}
{{- $out := dict }}
{{- range $env, $ref := $refs }}
{{- if or $ref.key (not $ref.optional) }}
{{- $_ := set $out $env (dict "secret" (default $default $ref.secret) "key" $ref.key "optional" (default false $ref.optional)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Plain environment of the runner (DISPATCHER_JOB_ENV). */}}
{{- define "infra-service.runnerEnv" -}}
{{- $env := dict
  "REDIS_URL" .Values.redis.url
  "REDIS_KEY_PREFIX" .Values.redis.keyPrefix
  "DATABASE_URL" .Values.database.url
  "DATABASE_CONNECT_TIMEOUT" (toString .Values.database.connectTimeoutSeconds)
  "PLAY_TIMEOUT" (toString .Values.runner.playTimeoutSeconds)
  "PLAY_MITOGEN" (toString .Values.runner.mitogen)
  "DEPLOY_KEY_USER" .Values.runner.deployKeyUser
  "PROVIDER_API_URL" .Values.runner.provider.apiUrl
  "PROVIDER_REINSTALL_OS" .Values.runner.provider.reinstallOs
  "LOG_LEVEL" .Values.runner.logLevel }}
{{- range $k, $v := .Values.runner.env }}
{{- $_ := set $env $k (toString $v) }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/* Checks that stop a release that could never work. */}}
{{- define "infra-service.validate" -}}
{{- if ge (int .Values.runner.playTimeoutSeconds) (int .Values.runner.activeDeadlineSeconds) }}
{{- fail "runner.playTimeoutSeconds must be below runner.activeDeadlineSeconds: the runner has to report a timeout before Kubernetes kills it" }}
{{- end }}
{{- range $action, $cap := .Values.dispatcher.actionCaps }}
{{- if gt (int $cap) (int $.Values.dispatcher.maxInFlight) }}
{{- fail (printf "dispatcher.actionCaps.%s (%d) is above dispatcher.maxInFlight (%d): a cap per action is a share of the global cap" $action (int $cap) (int $.Values.dispatcher.maxInFlight)) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.dispatcher.healthPort) (int .Values.dispatcher.metricsPort) }}
{{- fail "dispatcher.healthPort and dispatcher.metricsPort must differ" }}
{{- end }}
{{- if not .Values.runner.sshPrivateKey.key }}
{{- fail "runner.sshPrivateKey.key is empty: SSH_PRIVATE_KEY is required by every run (an empty key leaves the variable out, meant for optional secrets only); name the key of the Secret" }}
{{- end }}
{{- range $what, $map := dict "runner.annotations" .Values.runner.annotations "runner.podAnnotations" .Values.runner.podAnnotations }}
{{- $size := 0 }}
{{- range $k, $v := $map }}
{{- $size = add $size (len $k) (len (toString $v)) }}
{{- end }}
{{- if gt (int $size) 262144 }}
{{- fail (printf "%s take %d bytes (keys and values); Kubernetes allows at most 262144 (256 KiB) in all" $what (int $size)) }}
{{- end }}
{{- end }}
{{- range $name := list "PROVISIONER_MESSAGE" "JOB_NAME" "ORCHESTRATOR_SSH_PUBLIC_KEY" "JOB_DEADLINE_AT" }}
{{- if hasKey $.Values.runner.env $name }}
{{- fail (printf "runner.env.%s is set by the dispatcher itself; remove it" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Full name shortened so that "<shortname>-<suffix>" fits 63 characters for every suffix the
chart uses (longest: "-test-dispatcher", 16): 47 characters, ending in a hash of the full
name when cut, so two long release names stay distinct.
*/}}
{{- define "infra-service.shortname" -}}
{{- $full := include "infra-service.fullname" . }}
{{- if le (len $full) 47 }}
{{- $full }}
{{- else }}
{{- printf "%s-%s" ($full | trunc 40 | trimSuffix "-") ($full | sha256sum | trunc 6) }}
{{- end }}
{{- end }}

{{/* The port of a URL (dict "url" u "default" p): explicit port, else the default. */}}
{{- define "infra-service.urlPort" -}}
{{- $host := (urlParse .url).host }}
{{- if regexMatch ":[0-9]+$" $host }}
{{- regexFind "[0-9]+$" $host }}
{{- else }}
{{- .default }}
{{- end }}
{{- end }}

{{/* One egress rule: TCP to the given ports, to the given peers (none: any destination). */}}
{{- define "infra-service.egressRule" -}}
{{- $ports := list }}
{{- range .ports }}
{{- $ports = append $ports (dict "port" (int .) "protocol" "TCP") }}
{{- end }}
{{- if .to }}
{{- toYaml (dict "to" .to "ports" $ports) }}
{{- else }}
{{- toYaml (dict "ports" $ports) }}
{{- end }}
{{- end }}

{{/* Pod-level securityContext of every pod the chart runs besides the dispatcher: the
runner's (dispatcher/jobspec.py). */}}
{{- define "infra-service.hardenedPodSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runner.runAsUser }}
runAsGroup: {{ .Values.runner.runAsUser }}
fsGroup: {{ .Values.runner.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "infra-service.hardenedContainerSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runner.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* A secretKeyRef env entry (dict "name" ENV "ref" {secret,key,optional} "root" .). */}}
{{- define "infra-service.secretEnvVar" -}}
{{- if .ref.key }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ default (include "infra-service.secretName" .root) .ref.secret }}
      key: {{ .ref.key }}
      optional: {{ default false .ref.optional }}
{{- end }}
{{- end }}

{{/*
Placement of a `helm test` pod, given .Values.dispatcher or .Values.runner: the nodeSelector,
tolerations and image pull Secrets of the pods that run the same image.
*/}}
{{- define "infra-service.testPodPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
