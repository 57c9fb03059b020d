package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// exitWithParent makes the component stop when the process that started it dies,
// so that a test session killed hard (SIGKILL, OOM) leaves no control plane behind.
// TLT_PARENT_PID names that process; the check polls the parent pid, which
// changes to a reaper's when the parent dies. The component first gets SIGTERM (a
// graceful stop); if it still runs 10s later, it exits. (kube-apiserver waits for
// etcd and etcd for the apiserver's streams when both are stopped at once, so a
// graceful stop alone can hang.)
func exitWithParent(component string) {
	want, err := strconv.Atoi(os.Getenv("TLT_PARENT_PID"))
	if err != nil || want <= 1 {
		return
	}
	go func() {
		for os.Getppid() == want {
			time.Sleep(500 * time.Millisecond)
		}
		fmt.Fprintf(os.Stderr, "%s: the parent process %d exited: stopping\n", component, want)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		time.Sleep(10 * time.Second)
		fmt.Fprintf(os.Stderr, "%s: still running 10s after the parent exited: exiting now\n", component)
		os.Exit(1)
	}()
}
