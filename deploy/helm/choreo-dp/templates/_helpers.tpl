{{/*
Naming and labels, following the cert-manager / external-secrets charts.
*/}}

{{- define "choreo-dp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (some Kubernetes name fields are limited
to that by the DNS naming spec). If the release name contains the chart name it is used as is.
*/}}
{{- define "choreo-dp.fullname" -}}
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

{{- define "choreo-dp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "choreo-dp.labels" -}}
helm.sh/chart: {{ include "choreo-dp.chart" . }}
app.kubernetes.io/name: {{ include "choreo-dp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: choreo-dp
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Per-component names and labels. Call with (dict "root" $ "component" "operator").
*/}}
{{- define "choreo-dp.componentName" -}}
{{- printf "%s-%s" (include "choreo-dp.fullname" .root | trunc 54 | trimSuffix "-") .component }}
{{- end }}

{{- define "choreo-dp.componentLabels" -}}
{{ include "choreo-dp.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Immutable Deployment selector: never add labels here that may change between releases. */}}
{{- define "choreo-dp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "choreo-dp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "choreo-dp.serviceAccountName" -}}
{{- $sa := index .root.Values .component "serviceAccount" }}
{{- if $sa.create }}
{{- default (include "choreo-dp.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* image reference: a digest wins over a tag; the tag defaults to the chart's appVersion. */}}
{{- define "choreo-dp.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "choreo-dp.tokenSecretName" -}}
{{- if .Values.dataPlane.token.existingSecret }}
{{- .Values.dataPlane.token.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "choreo-dp.fullname" .) }}
{{- end }}
{{- end }}

{{- define "choreo-dp.tokenSecretKey" -}}
{{- if .Values.dataPlane.token.existingSecret }}
{{- .Values.dataPlane.token.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{- define "choreo-dp.caConfigMapName" -}}
{{- printf "%s-ca" (include "choreo-dp.fullname" .) }}
{{- end }}

{{- define "choreo-dp.registryPullSecretName" -}}
{{- default (printf "%s-registry" (include "choreo-dp.fullname" .)) .Values.registryPullSecret.name }}
{{- end }}

{{/*
The control plane's port, for the NetworkPolicy: explicit in the URL, else 443 for wss.
*/}}
{{- define "choreo-dp.controlPlanePort" -}}
{{- $host := (urlParse .Values.controlPlane.url).host }}
{{- if regexMatch ":[0-9]+$" $host }}
{{- regexFind "[0-9]+$" $host }}
{{- else if hasPrefix "ws://" .Values.controlPlane.url }}
{{- "80" }}
{{- else }}
{{- "443" }}
{{- end }}
{{- end }}

{{/* Values every install needs; checked once, with messages that say what to set. */}}
{{- define "choreo-dp.validate" -}}
{{- if not .Values.controlPlane.url }}
{{- fail "controlPlane.url is required: --set controlPlane.url=wss://HOST:PORT" }}
{{- end }}
{{- if and (hasPrefix "ws://" .Values.controlPlane.url) (not .Values.controlPlane.insecure) }}
{{- fail "controlPlane.url uses ws:// (no TLS); use wss:// or set controlPlane.insecure=true (development only)" }}
{{- end }}
{{- if not .Values.dataPlane.id }}
{{- fail "dataPlane.id is required: --set dataPlane.id=ID (the id registered at the control plane)" }}
{{- end }}
{{- if and (not .Values.dataPlane.token.existingSecret) (not .Values.dataPlane.token.value) }}
{{- fail "a dataplane token is required: set dataPlane.token.existingSecret (recommended) or dataPlane.token.value" }}
{{- end }}
{{- if and .Values.dataPlane.token.existingSecret .Values.dataPlane.token.value }}
{{- fail "set only one of dataPlane.token.existingSecret and dataPlane.token.value" }}
{{- end }}
{{- if and .Values.controlPlane.caBundle .Values.controlPlane.caBundleConfigMap.name }}
{{- fail "set only one of controlPlane.caBundle and controlPlane.caBundleConfigMap.name" }}
{{- end }}
{{- if and .Values.azureWorkloadIdentity.enabled (not .Values.azureWorkloadIdentity.clientId) }}
{{- fail "azureWorkloadIdentity.clientId is required when azureWorkloadIdentity.enabled=true" }}
{{- end }}
{{- if and .Values.registryPullSecret.create (not .Values.registryPullSecret.dockerConfigJson) }}
{{- fail "registryPullSecret.dockerConfigJson is required when registryPullSecret.create=true" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- if not .Values.networkPolicy.apiServer.cidrs }}
{{- fail "networkPolicy.apiServer.cidrs is required when networkPolicy.enabled=true (kubectl get endpoints kubernetes -n default)" }}
{{- end }}
{{- if not .Values.networkPolicy.controlPlane.cidrs }}
{{- fail "networkPolicy.controlPlane.cidrs is required when networkPolicy.enabled=true (the control plane's, or the proxy's, addresses)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Proxy settings for both pods; the API server's service IP is always exempt from the proxy. */}}
{{- define "choreo-dp.proxyEnv" -}}
{{- with .Values.proxy }}
{{- if .httpsProxy }}
- name: HTTPS_PROXY
  value: {{ .httpsProxy | quote }}
{{- end }}
{{- if .httpProxy }}
- name: HTTP_PROXY
  value: {{ .httpProxy | quote }}
{{- end }}
{{- if or .httpsProxy .httpProxy }}
- name: NO_PROXY
  {{- /* $(KUBERNETES_SERVICE_HOST) is expanded by the kubelet: in-cluster API calls never go to the proxy. */}}
  value: {{ printf "%s$(KUBERNETES_SERVICE_HOST)" (ternary (printf "%s," .noProxy) "" (ne .noProxy "")) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "choreo-dp.livenessProbe" -}}
httpGet:
  path: /healthz
  port: health
{{- toYaml .probe | nindent 0 }}
{{- end }}

{{/*
The choreo.dev CRDs that already exist in the cluster under another owner: created by `kubectl
apply -f crds/`, a GitOps tool, or another (possibly uninstalled) release. Helm cannot adopt them
("invalid ownership metadata"), so the chart leaves them as they are, as Helm does with a chart's
crds/ directory, and NOTES.txt says so. Comma-separated names; empty without a cluster (`helm
template`: lookup returns nothing) and when crds.install=false.
*/}}
{{- define "choreo-dp.foreignCRDs" -}}
{{- $out := list }}
{{- if .Values.crds.install }}
{{- range $path, $_ := .Files.Glob "crds-src/*.yaml" }}
{{- $name := (($.Files.Get $path | fromYaml).metadata).name }}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" $name }}
{{- if $live }}
{{- $ann := $live.metadata.annotations | default dict }}
{{- $owner := printf "%s/%s" (get $ann "meta.helm.sh/release-namespace") (get $ann "meta.helm.sh/release-name") }}
{{- if ne $owner (printf "%s/%s" $.Release.Namespace $.Release.Name) }}
{{- $out = append $out $name }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- join "," $out }}
{{- end }}
