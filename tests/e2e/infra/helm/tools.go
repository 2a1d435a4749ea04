//go:build tools

// Package tools records the upstream main package that build-kube.sh builds,
// so that `go mod tidy` keeps every module it needs in go.mod/go.sum.
// The file is never compiled (build tag "tools").
package tools

import _ "helm.sh/helm/v3/cmd/helm"
