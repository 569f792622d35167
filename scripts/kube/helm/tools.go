//go:build tools

// Keeps helm's command in this module's requirements so that `go mod tidy` records its
// dependencies in go.sum.
package helm

import _ "helm.sh/helm/v3/cmd/helm"
