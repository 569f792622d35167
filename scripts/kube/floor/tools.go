//go:build tools

// Keeps the floor's kube-apiserver in this module's requirements so that `go mod tidy`
// records its dependencies in go.sum.
//
// Go 1.26 links this release's github.com/modern-go/reflect2 v1.0.2 as pinned, without a
// replace or -checklinkname=0: the runtime keeps the linknamed map-iterator functions that
// package calls (runtime/linkname_shim.go names it) and accepts its pre-1.24 iterator
// layout (golang/go#71408).
package floor

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
