{{/*
Names. The chart's own objects are "<fullname>-<folder>", e.g. "halo-forge-trainer-torch".
*/}}
{{- define "halo-forge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "halo-forge.fullname" -}}
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

{{- define "halo-forge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "halo-forge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "halo-forge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "halo-forge.labels" -}}
helm.sh/chart: {{ include "halo-forge.chart" . }}
{{ include "halo-forge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: halo-forge
{{- end }}

{{/*
One service, four spellings (DESIGN.md §2), all derived from the values key (camelCase):
  trainerTorch -> folder "trainer-torch", module "halo_trainer_torch", env prefix "HALO_TRAINER_TORCH_".
Argument: the key.
*/}}
{{- define "halo-forge.folder" -}}
{{- kebabcase . }}
{{- end }}

{{- define "halo-forge.module" -}}
{{- printf "halo_%s" (snakecase .) }}
{{- end }}

{{- define "halo-forge.envPrefix" -}}
{{- printf "HALO_%s_" (snakecase . | upper) }}
{{- end }}

{{/* Argument: dict "root" $ "key" <key> "svc" <service values>. */}}
{{- define "halo-forge.componentName" -}}
{{- printf "%s-%s" (include "halo-forge.fullname" .root) (include "halo-forge.folder" .key) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "halo-forge.variant" -}}
{{- $variant := .svc.variant | default "slim" }}
{{- if not (has $variant (list "slim" "cpu" "cuda" "rocm")) }}
{{- fail (printf "services.%s.variant must be slim, cpu, cuda or rocm (got %q)" .key $variant) }}
{{- end }}
{{- $variant }}
{{- end }}

{{/* [<registry>/]<repository>/<folder>:<tag>[-<variant>]. Argument: the dict above. */}}
{{- define "halo-forge.image" -}}
{{- $root := .root }}
{{- $img := .svc.image | default dict }}
{{- $repo := $img.repository }}
{{- if not $repo }}
{{- $repo = printf "%s/%s" $root.Values.image.repository (include "halo-forge.folder" .key) }}
{{- if $root.Values.image.registry }}
{{- $repo = printf "%s/%s" $root.Values.image.registry $repo }}
{{- end }}
{{- end }}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- $variant := include "halo-forge.variant" . }}
{{- if ne $variant "slim" }}
{{- $tag = printf "%s-%s" $tag $variant }}
{{- end }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Container resources, plus the GPU limit of services with gpu.count > 0. Argument: the dict. */}}
{{- define "halo-forge.resources" -}}
{{- $res := deepCopy (.svc.resources | default dict) }}
{{- $gpu := .svc.gpu | default dict }}
{{- $count := int ($gpu.count | default 0) }}
{{- if gt $count 0 }}
{{- $variant := include "halo-forge.variant" . }}
{{- $resource := $gpu.resource }}
{{- if not $resource }}
{{- $resource = get (dict "cuda" "nvidia.com/gpu" "rocm" "amd.com/gpu") $variant }}
{{- end }}
{{- if not $resource }}
{{- fail (printf "services.%s.gpu.count > 0 with variant %q: set services.%s.gpu.resource (nvidia.com/gpu, amd.com/gpu)" .key $variant .key) }}
{{- end }}
{{- $limits := deepCopy ($res.limits | default dict) }}
{{- $_ := set $limits $resource $count }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Subchart object names, as those charts compute them. */}}
{{- define "halo-forge.nats.fullname" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "nats" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "halo-forge.postgresql.fullname" -}}
{{- if .Values.postgresql.fullnameOverride }}
{{- .Values.postgresql.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "postgresql" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "halo-forge.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s:4222" (include "halo-forge.nats.fullname" .) }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "NATS: set nats.enabled=true or externalNats.url" }}
{{- end }}
{{- end }}

{{/* Name of the chart's own Secret (token and/or external database URL). */}}
{{- define "halo-forge.secretName" -}}
{{- include "halo-forge.fullname" . }}
{{- end }}

{{/* HALO_DATABASE_URL (and what it needs) as container env entries. Argument: root context. */}}
{{- define "halo-forge.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: HALO_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.auth.existingSecret | default (include "halo-forge.postgresql.fullname" .) }}
      key: {{ dig "auth" "secretKeys" "userPasswordKey" "password" .Values.postgresql }}
- name: HALO_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(HALO_DB_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username (include "halo-forge.postgresql.fullname" .) .Values.postgresql.auth.database | quote }}
{{- else if .Values.externalDatabase.existingSecret }}
- name: HALO_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.existingSecretKey }}
{{- else if .Values.externalDatabase.url }}
- name: HALO_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "halo-forge.secretName" . }}
      key: database-url
{{- end }}
{{- end }}

{{/* HALO_NATS_USER / HALO_NATS_PASSWORD from the natsAuth Secret (every service). Argument: root context. */}}
{{- define "halo-forge.natsAuthEnv" -}}
{{- if .Values.natsAuth.enabled }}
- name: HALO_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ .Values.natsAuth.secretName }}
      key: user
- name: HALO_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.natsAuth.secretName }}
      key: password
{{- end }}
{{- end }}

{{/* HALO_GATEWAY_TOKEN from the token Secret, when there is one. Argument: root context. */}}
{{- define "halo-forge.tokenEnv" -}}
{{- if or .Values.auth.existingSecret .Values.auth.create }}
- name: HALO_GATEWAY_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret | default (include "halo-forge.secretName" .) }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- end }}
