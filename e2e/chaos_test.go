package e2e

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/chaos"
)

var (
	chaosSeeds    = flag.Int("chaos.seeds", 0, "long runs: this many seeds per node kind, from -chaos.seed (replaces the short runs)")
	chaosSeed     = flag.Uint64("chaos.seed", 1, "long runs: the first seed")
	chaosDuration = flag.Duration("chaos.duration", 150*time.Second, "long runs: the fault period of each run")
	chaosKinds    = flag.String("chaos.kinds", "stock,cring-node", "long runs: node kinds, comma-separated")
	chaosKeep     = flag.String("chaos.keep", "", "keep every run's work dir (data, logs, history.jsonl, report.txt) under this directory")
)

// TestChaos: a seeded chaos run per node kind — five real nodes behind
// fault fronts, two cring serve processes, clients through both while nodes
// are killed, stopped, slowed, blackholed and reset and proxies killed —
// must lose no acknowledged write, resurrect no acknowledged delete, return
// only bytes that were written, converge to exactly N copies within a
// minute of the faults ending, crash nothing and hang no request. Each run
// takes under three minutes. With -chaos.seeds=N it runs N seeds per kind
// with -chaos.duration each instead (long runs, by hand).
func TestChaos(t *testing.T) {
	type run struct {
		kind     chaos.Kind
		seed     uint64
		duration time.Duration
	}
	// Stock seed 6 lost a write before uploads re-read their key's version
	// records (docs/chaos.md, "Found and fixed"); it stays in the suite.
	runs := []run{
		{chaos.KindCringNode, 2, 75 * time.Second},
		{chaos.KindStock, 6, 75 * time.Second},
	}
	if *chaosSeeds > 0 {
		runs = nil
		for _, k := range strings.Split(*chaosKinds, ",") {
			for i := range *chaosSeeds {
				runs = append(runs, run{chaos.Kind(strings.TrimSpace(k)), *chaosSeed + uint64(i), *chaosDuration})
			}
		}
	}
	if testing.Short() {
		t.Skip("chaos runs take minutes")
	}
	cringBin := cringBinary(t)
	charmBin := charmCLI(t)
	for _, r := range runs {
		t.Run(fmt.Sprintf("%s/seed=%d", r.kind, r.seed), func(t *testing.T) {
			o := chaos.Options{
				Seed: r.seed, Duration: r.duration, Kind: r.kind,
				CringBin: cringBin, CharmBin: charmBin,
				Dir:  t.TempDir(),
				Logf: t.Logf,
			}
			if *chaosKeep != "" {
				o.Dir = filepath.Join(*chaosKeep, fmt.Sprintf("%s-%d", r.kind, r.seed))
				o.Keep = true
			}
			rep, err := chaos.Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Pass() {
				t.Log(rep.Summary())
				return
			}
			var b strings.Builder
			rep.WriteDetails(&b)
			t.Errorf("%s\n%s", rep.Summary(), b.String())
		})
	}
}
