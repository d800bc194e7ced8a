//go:build tools

// Package helm pins the helm command that xtask builds (cargo xtask cluster-build), so
// that go mod tidy keeps its dependencies in go.mod and go.sum. A main package: this
// file is never compiled, only read by the go command.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
