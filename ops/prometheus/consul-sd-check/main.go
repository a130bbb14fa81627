// Command consul-sd-check runs Prometheus' own Consul service discovery (the package behind
// consul_sd_configs, github.com/prometheus/prometheus/discovery/consul) against one server
// and prints the target groups it discovers as JSON on stdout.
//
// It runs discovery until it holds a non-empty set of target groups that has stopped
// changing for -settle (or, with -services, until every named service has a group), or
// exits 1 when -timeout passes first. Each group carries its targets (__address__ and the
// target's __meta_consul_* labels) and the group labels.
//
//	consul-sd-check -server 127.0.0.1:8500 [-path-prefix /peer/east] [-services a,b]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// group is one discovered target group, as printed.
type group struct {
	Source  string              `json:"source"`
	Labels  map[string]string   `json:"labels"`
	Targets []map[string]string `json:"targets"`
}

func main() {
	server := flag.String("server", "localhost:8500", "Consul HTTP API address (host:port)")
	pathPrefix := flag.String("path-prefix", "", "path_prefix of consul_sd_configs, e.g. /peer/east")
	services := flag.String("services", "", "comma-separated services to watch (default: all)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	settle := flag.Duration("settle", time.Second, "stop once the non-empty set is unchanged this long")
	verbose := flag.Bool("v", false, "log discovery at debug level on stderr")
	flag.Parse()

	conf := consul.DefaultSDConfig // what UnmarshalYAML starts from for consul_sd_configs
	conf.Server = *server
	conf.PathPrefix = *pathPrefix
	if *services != "" {
		conf.Services = strings.Split(*services, ",")
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	reg := prometheus.NewRegistry()
	refresh := discovery.NewRefreshMetrics(reg)
	metrics := conf.NewDiscovererMetrics(reg, refresh)
	if err := metrics.Register(); err != nil {
		fail("registering discovery metrics: %v", err)
	}
	defer metrics.Unregister()

	d, err := conf.NewDiscoverer(discovery.DiscovererOptions{Logger: logger, Metrics: metrics})
	if err != nil {
		fail("consul SD config: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ch := make(chan []*targetgroup.Group)
	go d.Run(ctx, ch)

	groups := map[string]*targetgroup.Group{} // by source: the latest version of each group
	var quiet <-chan time.Time
	for {
		select {
		case tgs := <-ch:
			for _, tg := range tgs {
				if tg != nil {
					groups[tg.Source] = tg
				}
			}
			quiet = nil
			if nonEmpty(groups) {
				if complete(groups, conf.Services) {
					emit(groups)
					return
				}
				quiet = time.After(*settle)
			}
		case <-quiet:
			emit(groups)
			return
		case <-ctx.Done():
			fail("no non-empty set of target groups within %s (server %s, path prefix %q)",
				*timeout, *server, *pathPrefix)
		}
	}
}

// nonEmpty reports whether any group has a target.
func nonEmpty(groups map[string]*targetgroup.Group) bool {
	for _, tg := range groups {
		if len(tg.Targets) > 0 {
			return true
		}
	}
	return false
}

// complete reports whether every explicitly named service has a group (Consul SD uses the
// service name as the group's source).
func complete(groups map[string]*targetgroup.Group, services []string) bool {
	if len(services) == 0 {
		return false
	}
	for _, name := range services {
		if _, ok := groups[name]; !ok {
			return false
		}
	}
	return true
}

// emit prints the groups as a JSON array sorted by source.
func emit(groups map[string]*targetgroup.Group) {
	out := make([]group, 0, len(groups))
	for _, tg := range groups {
		g := group{Source: tg.Source, Labels: map[string]string{}, Targets: []map[string]string{}}
		for k, v := range tg.Labels {
			g.Labels[string(k)] = string(v)
		}
		for _, t := range tg.Targets {
			m := make(map[string]string, len(t))
			for k, v := range t {
				m[string(k)] = string(v)
			}
			g.Targets = append(g.Targets, m)
		}
		sort.Slice(g.Targets, func(i, j int) bool {
			return g.Targets[i]["__address__"] < g.Targets[j]["__address__"]
		})
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Source < out[j].Source })
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail("writing JSON: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "consul-sd-check: "+format+"\n", args...)
	os.Exit(1)
}
