//go:build tools

// Package cluster pins the Kubernetes commands that xtask builds (cargo xtask
// cluster-build), so that go mod tidy keeps their dependencies in go.mod and go.sum.
// These are main packages: this file is never compiled, only read by the go command.
package cluster

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
