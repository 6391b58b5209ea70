{{- define "balena-exporter.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "balena-exporter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "balena-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "balena-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "balena-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "balena-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "balena-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "balena-exporter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "balena-exporter.secretName" -}}
{{- default (printf "%s-tokens" (include "balena-exporter.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* The exporter config: values.config plus one token_file auth per entry of values.auths. */}}
{{- define "balena-exporter.config" -}}
{{- $auths := dict -}}
{{- range $name, $_ := .Values.auths -}}
{{- $_ := set $auths $name (dict "token_file" (printf "/etc/balena-exporter/secrets/%s" $name)) -}}
{{- end -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "auths" $auths -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "balena-exporter.headlessName" -}}
{{- printf "%s-headless" (include "balena-exporter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The replica that owns a target when sharding: adler32(name) mod replicaCount. Stable: it
depends on the name and the replica count only. Call with (list $name $replicas). */}}
{{- define "balena-exporter.shardOf" -}}
{{- mod (atoi (adler32sum (index . 0))) (index . 1) -}}
{{- end -}}
