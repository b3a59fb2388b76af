{{- define "kwasi-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kwasi-operator.serviceAccountName" -}}
{{- default (include "kwasi-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kwasi-operator.selectorLabels" -}}
app.kubernetes.io/name: kwasi-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kwasi-operator.labels" -}}
{{ include "kwasi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The rules of the ClusterRole named (the argument) in files/rbac.yaml, a link to operator/deploy/rbac.yaml:
the one list of the operator's permissions. */}}
{{- define "kwasi-operator.rulesOf" -}}
{{- $name := .name -}}
{{- range $doc := splitList "\n---\n" (.root.Files.Get "files/rbac.yaml") }}
{{- $obj := fromYaml $doc }}
{{- if and (eq (get $obj "kind") "ClusterRole") (eq (get (get $obj "metadata") "name") $name) }}
{{- toYaml (get $obj "rules") }}
{{- end }}
{{- end }}
{{- end -}}
