{{- define "balena-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of every object. A StatefulSet (sharding) keeps it to 52 characters: Kubernetes
adds an 11-character revision hash to it in the controller-revision-hash label (63 at most). */}}
{{- define "balena-exporter.fullname" -}}
{{- $max := ternary 52 63 (and .Values.sharding .Values.sharding.enabled | default false) -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc $max | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc $max | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc $max | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "balena-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
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
app.kubernetes.io/part-of: balena-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image: [global.imageRegistry or image.registry/]repository, then @digest if set,
else :tag (default: the chart's appVersion, which is what the release workflow publishes). */}}
{{- define "balena-exporter.image" -}}
{{- $registry := .Values.image.registry -}}
{{- if and .Values.global .Values.global.imageRegistry -}}
{{- $registry = .Values.global.imageRegistry -}}
{{- end -}}
{{- $repo := .Values.image.repository -}}
{{- if $registry -}}
{{- $repo = printf "%s/%s" $registry $repo -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
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

{{/* A Prometheus duration ("1m30s", "90s", "500ms") in milliseconds. */}}
{{- define "balena-exporter.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w)" (toString .) -1 -}}
{{- $unit := regexFind "(ms|s|m|h|d|w)$" . -}}
{{- $n := trimSuffix $unit . | atoi -}}
{{- $total = add $total (mul $n (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* A pod probe from values, over HTTPS when the web config serves TLS (the kubelet does not
verify the certificate). Args: (list probe tls). */}}
{{- define "balena-exporter.podProbe" -}}
{{- $probe := deepCopy (index . 0) -}}
{{- if and (index . 1) $probe.httpGet -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{/* The scheme, tlsConfig and basicAuth of a ServiceMonitor endpoint (or, without the scheme,
of a Probe's spec). Args: (list values-of-the-object webConfig with-scheme). */}}
{{- define "balena-exporter.scrapeAuth" -}}
{{- $v := index . 0 -}}
{{- if index . 2 }}
scheme: {{ include "balena-exporter.scheme" (list $v (index . 1)) }}
{{- end }}
{{- with $v.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* http, or https with webConfig.tls, unless the object's values set it. */}}
{{- define "balena-exporter.scheme" -}}
{{- (index . 0).scheme | default (ternary "https" "http" (eq (index . 1).tls true)) -}}
{{- end -}}

{{/* What renders but could never run, refused at render time with one line each (the pod
would otherwise crash-loop, or Prometheus refuse its config): a target whose auth (or an
allowed_auths entry) is not under `auths` — with `existingSecret` too, where the auths are the
Secret's keys —, and a scrapeTimeout longer than its interval. */}}
{{- define "balena-exporter.validate" -}}
{{- range $name, $t := .Values.config.targets -}}
{{- range $a := concat (list (default "" $t.auth)) (default list $t.allowed_auths) -}}
{{- if and $a (not (hasKey $.Values.auths $a)) -}}
{{- if $.Values.existingSecret -}}
{{- fail (printf "config.targets.%s: auth %q is not under auths; with existingSecret, list every auth as an empty map (--set auths.%s=null is not enough: auths.%s: {}) and give the Secret %s a key %q" $name $a $a $a $.Values.existingSecret $a) -}}
{{- else -}}
{{- fail (printf "config.targets.%s: auth %q is not configured; set auths.%s.token (or existingSecret with a key %q)" $name $a $a $a) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.configReloader.enabled (or .Values.webConfig.tls .Values.webConfig.basicAuth) -}}
{{- fail "configReloader posts to http://127.0.0.1/-/reload without credentials: it cannot be used with webConfig.tls or webConfig.basicAuth (token files are re-read without it; a config change rolls the pods)" -}}
{{- end -}}
{{- if and (or .Values.webConfig.tls .Values.webConfig.basicAuth) (not .Values.webConfig.existingSecret) -}}
{{- fail "webConfig.tls or webConfig.basicAuth needs webConfig.existingSecret (the Secret with web-config.yml)" -}}
{{- end -}}
{{- range $kind := list "probe" "serviceMonitor" -}}
{{- $v := index $.Values $kind -}}
{{- if and $v.enabled $v.scrapeTimeout $v.interval -}}
{{- $timeout := include "balena-exporter.durationMs" $v.scrapeTimeout | int -}}
{{- $interval := include "balena-exporter.durationMs" $v.interval | int -}}
{{- if gt $timeout $interval -}}
{{- fail (printf "%s.scrapeTimeout (%s) is longer than %s.interval (%s): Prometheus refuses such a scrape config" $kind $v.scrapeTimeout $kind $v.interval) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* api.cache_ttl when not set: a little under the probe interval (docs/scaling.md), so one
fetch per interval serves every Prometheus and data is never older than one interval:
the interval minus 10 % of it, at most 5 s less (60s -> 55s, 30s -> 27s, 5m -> 4m55s). */}}
{{- define "balena-exporter.cacheTtl" -}}
{{- $interval := include "balena-exporter.durationMs" .Values.probe.interval | int -}}
{{- $margin := min 5000 (div $interval 10) -}}
{{- $ttl := sub $interval $margin -}}
{{- if eq (mod $ttl 1000) 0 }}{{ printf "%ds" (div $ttl 1000) }}{{ else }}{{ printf "%dms" $ttl }}{{ end -}}
{{- end -}}

{{/* The exporter config: values.config plus one token_file auth per entry of values.auths,
and api.cache_ttl derived from probe.interval unless set. */}}
{{- define "balena-exporter.config" -}}
{{- $auths := dict -}}
{{- range $name, $_ := .Values.auths -}}
{{- $_ := set $auths $name (dict "token_file" (printf "/etc/balena-exporter/secrets/%s" $name)) -}}
{{- end -}}
{{- $config := deepCopy .Values.config -}}
{{- $api := default dict $config.api -}}
{{- if not $api.cache_ttl -}}
{{- $_ := set $api "cache_ttl" (include "balena-exporter.cacheTtl" .) -}}
{{- end -}}
{{- $_ := set $config "api" $api -}}
{{- $_ := set $config "auths" $auths -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "balena-exporter.headlessName" -}}
{{- printf "%s-headless" (include "balena-exporter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The address of replica ${1} (sharding), as the replacement of a relabelling whose regex
captured the replica number. */}}
{{- define "balena-exporter.replicaAddress" -}}
{{- printf "%s-${1}.%s.%s.svc:%v" (include "balena-exporter.fullname" .) (include "balena-exporter.headlessName" .) (include "balena-exporter.namespace" .) .Values.service.port -}}
{{- end -}}

{{/* The one sharding rule (the same as deploy/prometheus/prometheus-sharded.yml and NOTES):
md5 hashmod of the target name, modulo replicaCount, then that replica's own address. */}}
{{- define "balena-exporter.shardRelabelings" -}}
- sourceLabels: [__param_target]
  action: hashmod
  modulus: {{ .Values.replicaCount }}
  targetLabel: __tmp_exporter_replica
- sourceLabels: [__tmp_exporter_replica]
  targetLabel: __address__
  replacement: {{ include "balena-exporter.replicaAddress" . | quote }}
{{- end -}}
