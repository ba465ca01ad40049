{{- define "mfcp.driverName" -}}meta-fuse-csi-plugin.csi.storage.pfn.io{{- end -}}

{{- define "mfcp.labels" -}}
app.kubernetes.io/name: meta-fuse-csi-plugin
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "mfcp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "mfcp.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ include "mfcp.driverName" . }}
{{- end -}}
