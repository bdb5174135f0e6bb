{{/*
Names. Object names are capped at 63 characters (DNS labels).
*/}}
{{- define "exec-reaper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
fullname prefixes every object: the release name, followed by the chart
name unless the release name already contains it ("exec-reaper" stays
"exec-reaper").
*/}}
{{- define "exec-reaper.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "exec-reaper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The provider's Deployment, Service and ServiceAccount. */}}
{{- define "exec-reaper.provider.fullname" -}}
{{- printf "%s-provider" (include "exec-reaper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The deleter's Deployment and ServiceAccount. */}}
{{- define "exec-reaper.deleter.fullname" -}}
{{- printf "%s-deleter" (include "exec-reaper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
"true" when the deleter may quarantine (its own action, or for the
constraints that ask), else empty: what its flags and permissions follow.
*/}}
{{- define "exec-reaper.deleter.quarantine" -}}
{{- if or (eq .Values.deleter.action "quarantine") .Values.deleter.allowQuarantine -}}true{{- end -}}
{{- end -}}

{{/* The Secret cert-controller fills with the serving certificate. */}}
{{- define "exec-reaper.provider.certSecret" -}}
{{- default (printf "%s-provider-cert" (include "exec-reaper.fullname" .)) .Values.provider.certSecretName | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The DNS name Gatekeeper dials, in the provider's certificate and in the
Provider object's URL: both come from here, so they always agree.
*/}}
{{- define "exec-reaper.provider.dnsName" -}}
{{- printf "%s.%s.svc" (include "exec-reaper.provider.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "exec-reaper.provider.url" -}}
{{- printf "https://%s:%d/v1/record" (include "exec-reaper.provider.dnsName" .) (int .Values.provider.service.port) -}}
{{- end -}}

{{/* The record guard's ValidatingAdmissionPolicy and binding. */}}
{{- define "exec-reaper.guardName" -}}
{{- printf "%s-record-guard" (include "exec-reaper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "exec-reaper.deleter.leaseName" -}}
{{- default (include "exec-reaper.deleter.fullname" .) .Values.deleter.leaderElection.leaseName -}}
{{- end -}}

{{/*
The provider records within the Provider's timeout minus half a second, so
that Gatekeeper gets the provider's answer (even a per-key error) rather
than a timeout of its own.
*/}}
{{- define "exec-reaper.provider.recordTimeout" -}}
{{- printf "%dms" (sub (mul (int .Values.provider.timeout) 1000) 500) -}}
{{- end -}}

{{- /* Seconds in-flight requests get once a draining replica closes its
listener: above the record timeout, so none is cut off. */ -}}
{{- define "exec-reaper.provider.shutdownTimeout" -}}
{{- add (int .Values.provider.timeout) 2 -}}
{{- end -}}

{{- define "exec-reaper.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "exec-reaper.labels" -}}
helm.sh/chart: {{ include "exec-reaper.chart" . }}
app.kubernetes.io/name: {{ include "exec-reaper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: exec-reaper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" . "component" "provider"). */}}
{{- define "exec-reaper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exec-reaper.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "exec-reaper.componentLabels" -}}
{{ include "exec-reaper.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Affinity of one component: the user's, or a preferred anti-affinity that
puts the replicas on different nodes where it can (required would leave a
replica pending on a one-node cluster).
*/}}
{{- define "exec-reaper.affinity" -}}
{{- if .values.affinity -}}
{{ toYaml .values.affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "exec-reaper.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/*
Namespaces the constraint never matches: the user's, Gatekeeper's and the
release's (exec-reaper must never wait on itself).
*/}}
{{- define "exec-reaper.excludedNamespaces" -}}
{{- $ns := concat .Values.policies.excludedNamespaces (list .Values.gatekeeper.namespace .Release.Namespace) | uniq -}}
{{- toJson $ns -}}
{{- end -}}
