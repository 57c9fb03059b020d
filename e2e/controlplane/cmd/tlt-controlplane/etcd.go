package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd starts a single-member etcd through go.etcd.io/etcd/server/v3/embed.
// Only the flags a test control plane needs; names follow etcd's own flags.
func runEtcd() int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	name := fs.String("name", "default", "member name")
	dataDir := fs.String("data-dir", "default.etcd", "data directory")
	listenClient := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs to listen on")
	advertiseClient := fs.String("advertise-client-urls", "", "comma-separated client URLs to advertise (default: the listen URLs)")
	listenPeer := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated peer URLs to listen on")
	advertisePeer := fs.String("initial-advertise-peer-urls", "", "comma-separated peer URLs to advertise (default: the listen URLs)")
	listenMetrics := fs.String("listen-metrics-urls", "", "comma-separated URLs for /metrics and /health (optional)")
	quota := fs.Int64("quota-backend-bytes", 0, "backend size quota (0: etcd's default)")
	noFsync := fs.Bool("unsafe-no-fsync", false, "skip fsync (faster; data may be lost on a crash; fine for tests)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn, error")
	snapshotCount := fs.Uint64("snapshot-count", 0, "committed transactions before a snapshot (0: etcd's default)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}

	parse := func(flagName, value string) ([]url.URL, bool) {
		var out []url.URL
		for _, s := range strings.Split(value, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			u, err := url.Parse(s)
			if err != nil {
				fmt.Fprintf(os.Stderr, "etcd: --%s: %v\n", flagName, err)
				return nil, false
			}
			out = append(out, *u)
		}
		return out, true
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}
	cfg.UnsafeNoFsync = *noFsync
	if *quota > 0 {
		cfg.QuotaBackendBytes = *quota
	}
	if *snapshotCount > 0 {
		cfg.SnapshotCount = *snapshotCount
	}
	var ok bool
	if cfg.ListenClientUrls, ok = parse("listen-client-urls", *listenClient); !ok {
		return 2
	}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	if *advertiseClient != "" {
		if cfg.AdvertiseClientUrls, ok = parse("advertise-client-urls", *advertiseClient); !ok {
			return 2
		}
	}
	if cfg.ListenPeerUrls, ok = parse("listen-peer-urls", *listenPeer); !ok {
		return 2
	}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	if *advertisePeer != "" {
		if cfg.AdvertisePeerUrls, ok = parse("initial-advertise-peer-urls", *advertisePeer); !ok {
			return 2
		}
	}
	if *listenMetrics != "" {
		if cfg.ListenMetricsUrls, ok = parse("listen-metrics-urls", *listenMetrics); !ok {
			return 2
		}
	}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", *listenClient)
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd: %v before ready, stopping\n", s)
		return 0
	}

	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd: %v, stopping\n", s)
	}
	// Close waits for open client streams (the apiserver's watches); bound it, and
	// let a second signal end it at once.
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-sig:
		fmt.Fprintln(os.Stderr, "etcd: second signal, exiting")
	case <-time.After(5 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not closed after 5s, exiting")
	}
	return 0
}
