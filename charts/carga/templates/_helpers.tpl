{{- define "carga.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "carga.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "carga.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "carga.labels" -}}
app.kubernetes.io/name: {{ include "carga.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "carga.env" -}}
- name: CARGA_CATALOG_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.catalog.urlSecret.name }}, key: {{ .Values.catalog.urlSecret.key }}}
- name: CARGA_REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: CARGA_QUEUE
  value: {{ .Values.queue | quote }}
{{- with .Values.amqp.urlSecret }}
- name: CARGA_AMQP_URL
  valueFrom:
    secretKeyRef: {name: {{ .name }}, key: {{ .key }}}
{{- end }}
- name: CARGA_BUCKET
  value: {{ .Values.bucket | quote }}
- name: CARGA_KEY_FILE
  value: /etc/carga/keys/{{ .Values.masterKeySecret.key }}
- name: CARGA_SECRETS_PROVIDER
  value: {{ .Values.secretsProvider | quote }}
- name: AWS_REGION
  value: {{ .Values.aws.region | quote }}
- name: CARGA_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: info
# Production never makes up a master key: a missing key file is an error, not a new key.
- name: CARGA_CREATE_KEY_IF_MISSING
  value: "false"
{{- end -}}
{{- define "carga.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "carga.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}
{{- define "carga.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
