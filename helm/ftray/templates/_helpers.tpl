{{/*
Chart name, truncated: KubeRay appends suffixes (-head-svc, -worker-<group>-<hash>) to names.
*/}}
{{- define "ftray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the RayCluster's name, so its head Service is "<fullname>-head-svc".
A release named like the chart (helm install ftray ...) is used as is.
*/}}
{{- define "ftray.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ftray.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ftray.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ftray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ftray.labels" -}}
helm.sh/chart: {{ include "ftray.chart" . }}
{{ include "ftray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ftray
{{- end }}

{{- define "ftray.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ftray.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ftray.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ftray.claimName" -}}
{{- default (printf "%s-storage" (include "ftray.fullname" .)) .Values.storage.pvc.existingClaim }}
{{- end }}

{{/*
Environment of every Ray container: storage root, API keys by secret reference only.
*/}}
{{- define "ftray.env" -}}
{{- $storage := .Values.storage }}
{{- if eq $storage.type "pvc" }}
- name: FTRAY_STORAGE
  value: {{ $storage.mountPath | quote }}
{{- else if and (eq $storage.type "object") $storage.object.uri }}
- name: FTRAY_STORAGE
  value: {{ $storage.object.uri | quote }}
{{- end }}
{{- with .Values.secrets.wandb }}
{{- if .secretName }}
- name: WANDB_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      optional: true
{{- end }}
{{- end }}
{{- with .Values.secrets.huggingface }}
{{- if .secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      optional: true
{{- end }}
{{- end }}
{{- with .Values.secrets.servingApiKey }}
{{- if .secretName }}
- name: FTRAY_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      optional: true
{{- end }}
{{- end }}
{{- include "ftray.authEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Ray token auth: on every Ray container, the autoscaler's included. The Secret is required
(not optional): a pod without its token must not start, rather than start without auth.
*/}}
{{- define "ftray.authEnv" -}}
{{- if .Values.rayAuth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rayAuth.secretName }}
      key: {{ .Values.rayAuth.key }}
{{- end }}
{{- end }}

{{- define "ftray.envFrom" -}}
{{- if and (eq .Values.storage.type "object") .Values.storage.object.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.storage.object.existingSecret }}
{{- end }}
{{- end }}

{{- define "ftray.volumes" -}}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSize }}
{{- if eq .Values.storage.type "pvc" }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ include "ftray.claimName" . }}
{{- end }}
{{- end }}

{{- define "ftray.volumeMounts" -}}
- name: shm
  mountPath: /dev/shm
{{- if eq .Values.storage.type "pvc" }}
- name: storage
  mountPath: {{ .Values.storage.mountPath }}
{{- end }}
{{- end }}

{{/*
Pod-level fields shared by head and workers. Call with (dict "root" $ "group" <group values>).
*/}}
{{- define "ftray.podSpecCommon" -}}
{{- $root := .root }}
serviceAccountName: {{ include "ftray.serviceAccountName" $root }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "ftray.volumes" $root | nindent 2 }}
{{- end }}

{{/*
Container fields shared by head and workers. Call with (dict "root" $ "group" <group values>).
*/}}
{{- define "ftray.containerCommon" -}}
{{- $root := .root }}
{{- $requests := deepCopy (.group.resources.requests | default dict) }}
{{- $limits := deepCopy (.group.resources.limits | default dict) }}
{{- $gpus := int (.group.gpus | default 0) }}
{{- if gt $gpus 0 }}
{{- $_ := set $requests "nvidia.com/gpu" $gpus }}
{{- $_ := set $limits "nvidia.com/gpu" $gpus }}
{{- end }}
image: {{ include "ftray.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml (dict "requests" $requests "limits" $limits) | nindent 2 }}
env:
  {{- include "ftray.env" $root | trim | nindent 2 }}
{{- include "ftray.envFrom" $root }}
volumeMounts:
  {{- include "ftray.volumeMounts" $root | nindent 2 }}
lifecycle:
  preStop:
    exec:
      command: ["/bin/sh", "-c", "ray stop"]
{{- end }}

{{/*
`ray start` parameters: KubeRay wants a map of strings, {} when empty.
*/}}
{{- define "ftray.rayStartParams" -}}
{{- $params := dict }}
{{- range $k, $v := . }}
{{- $_ := set $params $k (toString $v) }}
{{- end }}
{{- toYaml $params }}
{{- end }}

{{/*
A RayCluster spec (also a RayService's rayClusterConfig).
Call with (dict "root" $ "workerGroups" <list of groups>).
*/}}
{{- define "ftray.rayClusterSpec" -}}
{{- $root := .root }}
{{- $head := $root.Values.head }}
{{- if and (ne $head.serviceType "ClusterIP") (not $root.Values.rayAuth.enabled) }}
{{- fail (printf "head.serviceType %s exposes the Ray dashboard and Jobs API outside the cluster; that needs rayAuth.enabled: true (token auth), or keep ClusterIP and use kubectl port-forward" $head.serviceType) }}
{{- end }}
rayVersion: {{ $root.Values.rayVersion | quote }}
enableInTreeAutoscaling: {{ $root.Values.autoscaling.enabled }}
{{- if $root.Values.autoscaling.enabled }}
autoscalerOptions:
  upscalingMode: {{ $root.Values.autoscaling.upscalingMode }}
  idleTimeoutSeconds: {{ $root.Values.autoscaling.idleTimeoutSeconds }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $root.Values.autoscaling.resources | nindent 4 }}
  {{- with include "ftray.authEnv" $root | trim }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
{{- end }}
headGroupSpec:
  serviceType: {{ $head.serviceType }}
  rayStartParams:
    {{- include "ftray.rayStartParams" $head.rayStartParams | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "ftray.labels" $root | nindent 8 }}
        {{- with $head.labels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $head.annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "ftray.podSpecCommon" (dict "root" $root "group" $head) | trim | nindent 6 }}
      containers:
        - name: ray-head
          {{- include "ftray.containerCommon" (dict "root" $root "group" $head) | trim | nindent 10 }}
          ports:
            - {containerPort: 6379, name: gcs-server}
            - {containerPort: 8265, name: dashboard}
            - {containerPort: 10001, name: client}
            - {containerPort: 8000, name: serve}
            - {containerPort: 8080, name: metrics}
workerGroupSpecs:{{ if not .workerGroups }} []{{ end }}
{{- range .workerGroups }}
{{- $replicas := ternary .replicas .minReplicas (hasKey . "replicas") | int }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "worker group %q: minReplicas (%d) is above maxReplicas (%d); lower minReplicas or raise maxReplicas" .name (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- if or (lt $replicas (int .minReplicas)) (gt $replicas (int .maxReplicas)) }}
{{- fail (printf "worker group %q: replicas (%d) must be between minReplicas (%d) and maxReplicas (%d)" .name $replicas (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
  - groupName: {{ .name }}
    replicas: {{ $replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams:
      {{- include "ftray.rayStartParams" .rayStartParams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "ftray.labels" $root | nindent 10 }}
          {{- with .labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        {{- with .annotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        {{- include "ftray.podSpecCommon" (dict "root" $root "group" .) | trim | nindent 8 }}
        containers:
          - name: ray-worker
            {{- include "ftray.containerCommon" (dict "root" $root "group" .) | trim | nindent 12 }}
{{- end }}
{{- end }}
