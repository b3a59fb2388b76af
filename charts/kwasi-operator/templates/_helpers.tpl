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
