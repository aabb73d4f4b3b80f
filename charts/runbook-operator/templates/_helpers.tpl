{{/* The labels every object of the release carries. */}}
{{- define "runbook-operator.labels" -}}
app.kubernetes.io/name: runbook-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/*
The objects of a file shared with the kustomize manifests (files/ links to manifests/ and crds/),
so the two installs cannot drift: each object moves to the release namespace (its own and its
subjects'), gains the release labels, and is otherwise emitted as it is.
  {{ include "runbook-operator.shared" (dict "root" $ "file" "files/rbac.yaml") }}
*/}}
{{- define "runbook-operator.shared" -}}
{{- $root := .root }}
{{- $file := .file }}
{{- $text := $root.Files.Get $file }}
{{- if not $text }}{{ fail (printf "%s is missing or empty: the chart's files/ link to manifests/ and crds/" $file) }}{{ end }}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" $text -1 }}
{{- $obj := fromYaml $doc }}
{{- if hasKey $obj "Error" }}{{ fail (printf "%s: %s" $file $obj.Error) }}{{ end }}
{{- if $obj.kind }}
{{- if hasKey $obj.metadata "namespace" }}{{ $_ := set $obj.metadata "namespace" $root.Release.Namespace }}{{ end }}
{{- range $obj.subjects | default list }}{{ if hasKey . "namespace" }}{{ $_ := set . "namespace" $root.Release.Namespace }}{{ end }}{{ end }}
{{- $_ := set $obj.metadata "labels" (merge (include "runbook-operator.labels" $root | fromYaml) ($obj.metadata.labels | default dict)) }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
