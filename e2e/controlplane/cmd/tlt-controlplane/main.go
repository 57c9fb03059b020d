// Command tlt-controlplane is one multi-call binary holding the components of a
// Kubernetes control plane for tests: kube-apiserver, kube-controller-manager,
// kube-scheduler (the upstream commands, imported from k8s.io/kubernetes), etcd
// (go.etcd.io/etcd/server/v3/embed) and kwok (sigs.k8s.io/kwok, fake nodes and
// pod lifecycle).
//
// The component is chosen by the name the binary is called by (scripts/build-controlplane.sh
// makes one symlink per component) or by the first argument:
//
//	kube-apiserver --etcd-servers=...        (symlink)
//	tlt-controlplane kube-apiserver --etcd-servers=...
//
// One binary instead of five: the components share most of their packages, so
// one link step (and one copy of the shared code on disk) instead of five.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // for timeZone support in CronJob, as upstream's main packages do

	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
)

// components maps a component name to its entry point. Each entry point sees
// os.Args as if it were its own binary (os.Args[0] is the component's name).
var components = map[string]func() int{
	"kube-apiserver":          runAPIServer,
	"kube-controller-manager": runControllerManager,
	"kube-scheduler":          runScheduler,
	"etcd":                    runEtcd,
	"kwok":                    runKwok,
	"kwok-stages":             runKwokStages,
	"version":                 runVersion,
}

func names() string {
	var out []string
	for name := range components {
		out = append(out, name)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func main() {
	self := filepath.Base(os.Args[0])
	if run, ok := components[self]; ok {
		exitWithParent(self)
		os.Exit(run())
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [flags]\ncomponents: %s\n", self, names())
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		os.Exit(0)
	}
	run, ok := components[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s: unknown component %q (known: %s)\n", self, os.Args[1], names())
		os.Exit(2)
	}
	os.Args = append([]string{os.Args[1]}, os.Args[2:]...)
	exitWithParent(os.Args[0])
	os.Exit(run())
}
