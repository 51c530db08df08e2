{{/* Chart name. */}}
{{- define "sam3-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, also the RayService name. KubeRay limits RayService names to 47 characters (it appends a
suffix for each RayCluster) and requires a DNS-1035 label.
*/}}
{{- define "sam3-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart label value. */}}
{{- define "sam3-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels shared by every Ray pod of this release. */}}
{{- define "sam3-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sam3-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selects only the Ray pods of this release (KubeRay labels every Ray pod ray.io/is-ray-node=yes). */}}
{{- define "sam3-serve.rayPodSelectorLabels" -}}
{{ include "sam3-serve.selectorLabels" . }}
ray.io/is-ray-node: "yes"
{{- end }}

{{/*
Pod template labels: stable across chart versions on purpose. Any change to rayClusterConfig (labels
included) makes KubeRay build a whole new cluster, so no chart/app version here.
*/}}
{{- define "sam3-serve.podLabels" -}}
{{ include "sam3-serve.selectorLabels" . }}
app.kubernetes.io/part-of: sam3-serve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Common labels. */}}
{{- define "sam3-serve.labels" -}}
helm.sh/chart: {{ include "sam3-serve.chart" . }}
{{ include "sam3-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sam3-serve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ServiceAccount used by every Ray pod. */}}
{{- define "sam3-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sam3-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Chart-managed Secret (only holds what no existingSecret covers). */}}
{{- define "sam3-serve.secretName" -}}
{{- printf "%s-credentials" (include "sam3-serve.fullname" .) }}
{{- end }}

{{/* True when the chart must create its Secret. */}}
{{- define "sam3-serve.createSecret" -}}
{{- if or (and (not .Values.s3.existingSecret) .Values.s3.accessKeyId) (and (not .Values.huggingface.existingSecret) .Values.huggingface.token) }}true{{ end }}
{{- end }}

{{/* The KubeRay-managed serve Service (RayService spec.serveService): the API Service. */}}
{{- define "sam3-serve.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "sam3-serve.fullname" .) }}
{{- end }}

{{- define "sam3-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Directory where the CPU worker pods mount auth.existingSecret; its keys.yaml is app.auth.keys_file. */}}
{{- define "sam3-serve.authKeysDir" -}}
/etc/sam3-serve/auth
{{- end }}

{{/*
serveConfigV2: the same structure as serve_config.yaml. `args` is .Values.app plus the `auth` block: app.auth
(inline `keys` only) with the chart's `auth` values (mode, publicDocs, corsOrigins, and keys_file when
existingSecret is set); validated by serve_app.config.AppConfig when the app is built.
*/}}
{{- define "sam3-serve.serveConfig" -}}
{{- $args := deepCopy .Values.app }}
{{- $auth := default dict $args.auth }}
{{- $_ := set $auth "mode" .Values.auth.mode }}
{{- $_ := set $auth "public_docs" .Values.auth.publicDocs }}
{{- $_ := set $auth "cors_origins" .Values.auth.corsOrigins }}
{{- if .Values.auth.existingSecret }}
{{- $_ := set $auth "keys_file" (printf "%s/keys.yaml" (include "sam3-serve.authKeysDir" .)) }}
{{- end }}
{{- $_ := set $args "auth" $auth }}
{{- $app := dict "name" .Values.serve.applicationName "route_prefix" .Values.serve.routePrefix "import_path" .Values.serve.importPath "args" $args }}
{{- $http := dict "host" "0.0.0.0" "port" 8000 "request_timeout_s" .Values.serve.requestTimeoutS }}
{{- $cfg := dict "proxy_location" .Values.serve.proxyLocation "http_options" $http "applications" (list $app) }}
{{- with .Values.serve.loggingConfig }}
{{- $_ := set $cfg "logging_config" . }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
True ("true") when a model deployment or video session actor may run on the CPU worker group: an explicit
num_gpus of 0 (a CPU-only deployment). Then the CPU group loads weights too (HF token, Hub egress).
*/}}
{{- define "sam3-serve.modelsOnCpu" -}}
{{- $shares := list (dig "concept" "replica" "num_gpus" nil .Values.app) (dig "click" "replica" "num_gpus" nil .Values.app) (dig "video" "actor" "num_gpus" nil .Values.app) }}
{{- range $shares }}
{{- if and (not (kindIs "invalid" .)) (not (kindIs "string" .)) (eq (float64 .) 0.0) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
True ("true") when the model replicas download weights from the Hugging Face Hub: not huggingface.offline and
a model id (app.model.model_id, app.video.model_id) that is not a local path ("/..." or "./...").
*/}}
{{- define "sam3-serve.hubDownload" -}}
{{- if not .Values.huggingface.offline }}
{{- range list (dig "model" "model_id" "" .Values.app) (dig "video" "model_id" "" .Values.app) }}
{{- $id := toString . }}
{{- if and . (ne $id "<nil>") (not (hasPrefix "/" $id)) (not (hasPrefix "." $id)) }}true{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Ray worker groups (by ray.io/group) that load the models: the GPU group, plus the CPU group when a model runs on CPU. */}}
{{- define "sam3-serve.modelGroups" -}}
{{- $groups := list .Values.gpuWorkers.groupName }}
{{- if include "sam3-serve.modelsOnCpu" . }}
{{- $groups = append $groups .Values.cpuWorkers.groupName }}
{{- end }}
{{- toJson $groups }}
{{- end }}

{{/* KubeRay's ray.io/group label value on the head pod. */}}
{{- define "sam3-serve.headGroupLabel" -}}
headgroup
{{- end }}

{{/* Mount path of the service-account token the autoscaler sidecar reads (Ray's KubeRay node provider). */}}
{{- define "sam3-serve.saTokenDir" -}}
/var/run/secrets/kubernetes.io/serviceaccount
{{- end }}

{{/*
Env vars of a Ray container. Call with (dict "root" $ "s3" <bool> "hf" <bool>): credentials go only where they
are used. S3 keys: the worker groups (ingress, JobWorker, SessionManager on CPU; video session actors on GPU);
never the head (num-cpus 0: no replica of ours runs there). HF token: the groups that load the models.
*/}}
{{- define "sam3-serve.env" -}}
{{- $root := .root }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SAM3_RAYSERVICE_NAME
  value: {{ include "sam3-serve.fullname" $root | quote }}
- name: HF_HOME
  value: /home/ray/.cache/huggingface
{{- if $root.Values.huggingface.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- if and .hf (or $root.Values.huggingface.existingSecret $root.Values.huggingface.token) }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ default (include "sam3-serve.secretName" $root) $root.Values.huggingface.existingSecret }}
      key: {{ $root.Values.huggingface.tokenKey }}
{{- end }}
{{- if and .s3 (or $root.Values.s3.existingSecret $root.Values.s3.accessKeyId) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ default (include "sam3-serve.secretName" $root) $root.Values.s3.existingSecret }}
      key: {{ $root.Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "sam3-serve.secretName" $root) $root.Values.s3.existingSecret }}
      key: {{ $root.Values.s3.secretAccessKeyKey }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Ray pod template. Call with (dict "root" $ "group" <values of the group> "role" "head"|"cpu"|"gpu"
"component" <name> "gpus" <int>). The role decides what the pod gets:
- head: no credentials, no service-account token in the Ray container; its ServiceAccount is head.serviceAccountName
  or, when empty, the one KubeRay creates per RayCluster and binds the autoscaler's Role to (patch pods and
  the RayCluster), so the worker pods' ServiceAccount never holds those rights. With the autoscaler on, a
  projected token volume is mounted only into the autoscaler sidecar (see autoscalerOptions in rayservice.yaml).
- cpu: the ingress replicas: API keys mount, S3 keys, the service-account token (GET /v1/cluster reads the
  RayService through the Kubernetes API) when cpuWorkers.automountServiceAccountToken.
- gpu: the model replicas and video session actors: S3 keys and the HF token, no service-account token.
KubeRay treats containers[0] as the Ray container, adds the /dev/shm emptyDir, ports it lacks, probes,
the wait-gcs-ready init container (copying this container's securityContext and mounts), the Ray auth token
env (authOptions) and, on the head, the autoscaler sidecar.
*/}}
{{- define "sam3-serve.podTemplate" -}}
{{- $root := .root }}
{{- $g := .group }}
{{- $role := .role }}
{{- $modelGroup := or (eq $role "gpu") (and (eq $role "cpu") (include "sam3-serve.modelsOnCpu" $root)) }}
{{- $s3 := ne $role "head" }}
{{- $ingress := eq $role "cpu" }}
metadata:
  labels:
    {{- include "sam3-serve.podLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $g.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $g.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if eq $role "head" }}
  {{- with $root.Values.head.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  # No token in the Ray container (dashboard, Jobs API); the autoscaler sidecar gets its own mount.
  automountServiceAccountToken: false
  {{- else }}
  serviceAccountName: {{ include "sam3-serve.serviceAccountName" $root }}
  {{- if and $ingress $root.Values.cpuWorkers.automountServiceAccountToken }}
  # The ingress replicas read the RayService through the Kubernetes API (GET /v1/cluster).
  automountServiceAccountToken: true
  {{- else }}
  automountServiceAccountToken: false
  {{- end }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray
      image: {{ include "sam3-serve.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- with $root.Values.containerSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- if eq .component "ray-head" }}
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        {{- end }}
        - name: serve
          containerPort: 8000
        - name: metrics
          containerPort: 8080
      env:
        {{- include "sam3-serve.env" (dict "root" $root "s3" $s3 "hf" $modelGroup) | nindent 8 }}
      {{- with $root.Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- $res := deepCopy (default dict $g.resources) }}
      {{- if .gpus }}
      {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" .gpus) (default dict $res.requests)) }}
      {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" .gpus) (default dict $res.limits)) }}
      {{- end }}
      {{- with $res }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: cache
          mountPath: /home/ray/.cache
        {{- if .gpus }}
        - name: hf-cache
          mountPath: /home/ray/.cache/huggingface
        {{- end }}
        {{- if and $ingress $root.Values.auth.existingSecret }}
        - name: api-keys
          mountPath: {{ include "sam3-serve.authKeysDir" $root }}
          readOnly: true
        {{- end }}
        {{- with $root.Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    - name: cache
      emptyDir:
        sizeLimit: 2Gi
    {{- if .gpus }}
    - name: hf-cache
      {{- if $root.Values.huggingface.cache.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ $root.Values.huggingface.cache.existingClaim }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $root.Values.huggingface.cache.sizeLimit }}
      {{- end }}
    {{- end }}
    {{- if and $ingress $root.Values.auth.existingSecret }}
    # API key hashes (auth.existingSecret), only where the ingress runs; a directory mount, so Secret updates
    # reach the file (the ingress re-reads it).
    - name: api-keys
      secret:
        secretName: {{ $root.Values.auth.existingSecret }}
        defaultMode: 288 # 0440: the ray user (group 100 via fsGroup) reads it
        items:
          - key: keys.yaml
            path: keys.yaml
    {{- end }}
    {{- if and (eq $role "head") $root.Values.autoscaler.enabled }}
    # The head's service-account token, mounted only into the autoscaler sidecar (autoscalerOptions.volumeMounts):
    # what automountServiceAccountToken would mount, as a projected volume (kubelet rotates the token).
    - name: autoscaler-sa-token
      projected:
        defaultMode: 292 # 0444
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3607
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    apiVersion: v1
                    fieldPath: metadata.namespace
    {{- end }}
    {{- with $root.Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* Checks JSON schema cannot express; failing here beats a RayService the operator rejects later. */}}
{{- define "sam3-serve.validate" -}}
{{- if eq (toString .Values.app.concept.replica.num_gpus) "auto" }}
{{- fail "app.concept.replica.num_gpus must be explicit on Kubernetes (e.g. 1): 'auto' resolves to 0 while the GPU pool is scaled to zero" }}
{{- end }}
{{- range $name, $g := dict "cpuWorkers" .Values.cpuWorkers "gpuWorkers" .Values.gpuWorkers }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "%s.minReplicas (%v) must be <= %s.maxReplicas (%v)" $name $g.minReplicas $name $g.maxReplicas) }}
{{- end }}
{{- if and (not (kindIs "invalid" $g.idleTimeoutSeconds)) (or (not $.Values.autoscaler.enabled) (ne $.Values.autoscaler.version "v2")) }}
{{- fail (printf "%s.idleTimeoutSeconds needs autoscaler.enabled=true and autoscaler.version=v2" $name) }}
{{- end }}
{{- end }}
{{- if eq .Values.rayService.upgradeStrategy "NewClusterWithIncrementalUpgrade" }}
{{- if not .Values.autoscaler.enabled }}
{{- fail "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs autoscaler.enabled=true" }}
{{- end }}
{{- if not .Values.rayService.clusterUpgradeOptions.gatewayClassName }}
{{- fail "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs rayService.clusterUpgradeOptions (gatewayClassName, stepSizePercent, intervalSeconds)" }}
{{- end }}
{{- end }}
{{- $appAuth := default dict .Values.app.auth }}
{{- range $key := list "mode" "keys_file" "public_docs" "cors_origins" }}
{{- if hasKey $appAuth $key }}
{{- fail (printf "app.auth.%s: set it with the chart's auth values (auth.mode, auth.existingSecret, auth.publicDocs, auth.corsOrigins); app.auth may only hold inline keys, quotas and tenant_quotas" $key) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.auth.mode "api_keys") (not .Values.auth.existingSecret) (not $appAuth.keys) }}
{{- fail "auth.mode api_keys needs auth.existingSecret (a Secret whose keys.yaml lists {key_sha256, tenant, name}) or app.auth.keys" }}
{{- end }}
{{- range $name, $b := .Values.podDisruptionBudget }}
{{- if and (kindIs "map" $b) (kindIs "invalid" $b.minAvailable) (kindIs "invalid" $b.maxUnavailable) }}
{{- fail (printf "podDisruptionBudget.%s needs minAvailable or maxUnavailable" $name) }}
{{- end }}
{{- end }}
{{- if eq .Values.cpuWorkers.groupName .Values.gpuWorkers.groupName }}
{{- fail "cpuWorkers.groupName and gpuWorkers.groupName must differ (NetworkPolicies and PodDisruptionBudgets select pods by ray.io/group)" }}
{{- end }}
{{- if has (include "sam3-serve.headGroupLabel" .) (list .Values.cpuWorkers.groupName .Values.gpuWorkers.groupName) }}
{{- fail (printf "worker group names must not be %q (KubeRay's ray.io/group of the head pod)" (include "sam3-serve.headGroupLabel" .)) }}
{{- end }}
{{- if and .Values.s3.accessKeyId (not .Values.s3.secretAccessKey) (not .Values.s3.existingSecret) }}
{{- fail "s3.accessKeyId is set without s3.secretAccessKey" }}
{{- end }}
{{- end }}
