// Pins the Gateway API release whose standard-channel CRDs (config/crd/standard/*.yaml)
// tools/kube/build.py copies into the cache for the real test cluster. Nothing here is built
// or imported, so `go mod tidy` would drop the requirement: edit the version by hand and run
// `go mod download sigs.k8s.io/gateway-api` to refresh go.sum.
module choreo.dev/tools/kube/gateway-api

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3
