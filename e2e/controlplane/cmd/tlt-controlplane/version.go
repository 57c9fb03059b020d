package main

import (
	"fmt"

	"k8s.io/component-base/version"
)

// runVersion prints the Kubernetes version the binary was built from (set with
// -ldflags -X by scripts/build-controlplane.sh).
func runVersion() int {
	v := version.Get()
	fmt.Printf("%s (go %s, %s)\n", v.GitVersion, v.GoVersion, v.Platform)
	return 0
}
