{{/*
The operator's grants, split by scope, so that both watch modes grant exactly the same calls: cluster-wide,
one ClusterRole holds both lists; with watch.clusterWide false, the ClusterRole holds only the cluster-scoped
list and a Role in each watched namespace the namespaced one. tests/test_helm_rbac.py derives both lists from
the operator's code.
*/}}

{{/*
Cluster-scoped resources: granted by the ClusterRole in either mode (a Role cannot grant them). kopf watches
cluster-scoped resources cluster-wide even when it serves a list of namespaces.
*/}}
{{- define "poolbudget.rbac.clusterScopedRules" -}}
# The budgets: kopf keeps its finalizer and progress on them; status goes through its subresource.
- apiGroups: [poolbudget.io]
  resources: [poolbudgets]
  verbs: [list, watch, patch]
- apiGroups: [poolbudget.io]
  resources: [poolbudgets/status]
  verbs: [patch]
# namespaceSelector matches namespace labels (and kopf lists namespaces to find the ones it serves).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# kopf's peering between replicas; the operator creates the peering object when it is missing.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch, create]
# kopf scans CRDs to resolve the resources it serves (and notices when they appear).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/*
Namespaced resources of the apps: cluster-wide through the ClusterRole, or a Role in each watched namespace.
*/}}
{{- define "poolbudget.rbac.namespacedRules" -}}
# Opted-in Deployments get their pool env patched; nothing is created, replaced or deleted.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, patch]
# HPAs size a Deployment for maxReplicas.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch]
# Terminating pods still hold connections: the observed footprint counts them. Live delivery patches one
# annotation of each pod, its allotment (poolbudget.io/allotment); pods are never created, updated or deleted.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Events on resized Deployments (and, cluster-wide, on PoolBudgets): kopf posts core v1 Events, never patches them.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
The namespaces the operator watches when watch.clusterWide is false, checked again here for renders that skip
the schema (--skip-schema-validation).
*/}}
{{- define "poolbudget.watchedNamespaces" -}}
{{- if .Values.watch.clusterWide }}
{{- if .Values.watch.namespaces }}
{{- fail "watch.namespaces is set but watch.clusterWide is true: set watch.clusterWide=false to watch only those namespaces" }}
{{- end }}
{{- else }}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.clusterWide is false: list the namespaces to watch in watch.namespaces" }}
{{- end }}
{{- toJson (uniq .Values.watch.namespaces) }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount as an RBAC subject.
*/}}
{{- define "poolbudget.rbac.subjects" -}}
- kind: ServiceAccount
  name: {{ include "poolbudget.serviceAccountName" . }}
  namespace: {{ include "poolbudget.namespace" . }}
{{- end }}
