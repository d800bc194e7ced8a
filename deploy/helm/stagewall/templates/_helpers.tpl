{{/* The agent's image. */}}
{{- define "stagewall.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The pods' cgroup below the cgroup2 mount, by kubelet's cgroup driver. */}}
{{- define "stagewall.podsCgroup" -}}
{{- if eq .Values.cgroupDriver "systemd" -}}
/kubepods.slice
{{- else if eq .Values.cgroupDriver "cgroupfs" -}}
/kubepods
{{- else -}}
{{- fail (printf "cgroupDriver: %q is neither systemd nor cgroupfs" .Values.cgroupDriver) -}}
{{- end -}}
{{- end }}

{{/* The guarded cgroup: guard.cgroup, else the pods' cgroup. */}}
{{- define "stagewall.guardCgroup" -}}
{{ .Values.guard.cgroup | default (include "stagewall.podsCgroup" .) }}
{{- end }}
