{{/* Names and labels shared by every template. */}}

{{- define "tlt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; DNS label length (63). */}}
{{- define "tlt-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tlt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selecting the operator's pod; never change across upgrades. */}}
{{- define "tlt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tlt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tlt-operator.labels" -}}
helm.sh/chart: {{ include "tlt-operator.chart" . }}
{{ include "tlt-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tlt
app.kubernetes.io/component: operator
{{- end }}

{{- define "tlt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tlt-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "<registry>/<repository>" */}}
{{- define "tlt-operator.repository" -}}
{{- $registry := .registry | trimSuffix "/" }}
{{- if $registry }}{{ printf "%s/%s" $registry .repository }}{{ else }}{{ .repository }}{{ end }}
{{- end }}

{{- define "tlt-operator.image" -}}
{{- $repo := include "tlt-operator.repository" (dict "registry" .Values.imageRegistry "repository" .Values.image.repository) }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* include "tlt-operator.workerImage" (list . "cuda") */}}
{{- define "tlt-operator.workerImage" -}}
{{- $root := index . 0 }}
{{- $img := index $root.Values.workerImages (index . 1) }}
{{- $repo := include "tlt-operator.repository" (dict "registry" $root.Values.imageRegistry "repository" $img.repository) }}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* The watched namespaces, de-duplicated, as a list. */}}
{{- define "tlt-operator.watchNamespaces" -}}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- end }}

{{/*
What the operator does inside a namespace it serves (operator/tlt_operator/kube.py and
kopf): the same rules make the ClusterRole of a cluster-wide install and the Role of
each watched namespace. Children are deleted by the garbage collector through their
owner references, so the operator deletes only pods (replacements, scale-down) and,
after ttlSecondsAfterFinished, the job itself. It gives each job pod an identity of its
own (ServiceAccount, Role, RoleBinding: read its job, read and label its own pod, and
for the head write the job's progress ConfigMap): RBAC lets it grant only what it
holds, so those verbs are here too. Secrets: create only (each job's Ray token is made
when the Secret is created and never read back). Events: create, and get/patch to raise
the count of a repeated one.
*/}}
{{- define "tlt-operator.namespacedRules" -}}
- apiGroups: ["tlt.dev"]
  resources: ["reasoningrljobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["tlt.dev"]
  resources: ["reasoningrljobs/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "get", "patch"]
{{- end }}
