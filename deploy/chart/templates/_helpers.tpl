{{/* The image the agent and the CNI installer run. */}}
{{- define "podguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The cluster CIDRs as the agent reads them (comma-separated). */}}
{{- define "podguard.clusterCIDRs" -}}
{{- if not .Values.clusterCIDRs -}}
{{- fail "clusterCIDRs: set the cluster's pod network (kube-controller-manager --cluster-cidr), e.g. --set clusterCIDRs={10.244.0.0/16}" -}}
{{- end -}}
{{ join "," .Values.clusterCIDRs }}
{{- end -}}
