package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/cring-dev/cring/internal/backup"
)

// Difference kinds.
const (
	MissingFromBackup  = "missing from backup"
	MissingFromCluster = "missing from cluster"
	DifferentBytes     = "different bytes"
)

// Difference is one key where backup and cluster disagree.
type Difference struct {
	Key         string
	Kind        string
	BackupSize  int64 // -1 when absent
	ClusterSize int64 // -1 when absent
}

// VerifyResult sums up a comparison.
type VerifyResult struct {
	Users       []string
	Compared    int   // keys present on both sides
	Bytes       int64 // hashed on each side
	Differences []Difference
}

// VerifyOptions for Verify.
type VerifyOptions struct {
	Target  backup.Target
	Cluster *Cluster
	// Users to compare; empty means every user the backup knows.
	Users    []string
	Parallel int // default 4
	// Quick compares sizes only, without reading any bytes.
	Quick bool
}

// Verify compares the backup with the cluster, user by user: files present
// on one side only, and files whose bytes differ (sha256 of both sides).
func Verify(ctx context.Context, o VerifyOptions) (VerifyResult, error) {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	users := o.Users
	if len(users) == 0 {
		tops, err := o.Target.List(ctx, "", false)
		if err != nil {
			return VerifyResult{}, err
		}
		for _, t := range tops {
			if t.IsDir {
				users = append(users, t.Key)
			}
		}
	}
	res := VerifyResult{Users: users}
	type pair struct {
		key        string
		charmID    string
		path       string
		bsize, csz int64
	}
	var both []pair
	for _, u := range users {
		objs, err := o.Target.List(ctx, u+"/", true)
		if err != nil {
			return res, err
		}
		files, err := o.Cluster.Walk(ctx, u)
		if err != nil {
			return res, err
		}
		inCluster := map[string]File{}
		for _, f := range files {
			inCluster[u+"/"+f.Path] = f
		}
		for _, ob := range objs {
			f, ok := inCluster[ob.Key]
			if !ok {
				res.Differences = append(res.Differences, Difference{ob.Key, MissingFromCluster, ob.Size, -1})
				continue
			}
			delete(inCluster, ob.Key)
			if ob.Size != f.Size {
				res.Differences = append(res.Differences, Difference{ob.Key, DifferentBytes, ob.Size, f.Size})
				continue
			}
			both = append(both, pair{ob.Key, u, f.Path, ob.Size, f.Size})
		}
		for k, f := range inCluster {
			res.Differences = append(res.Differences, Difference{k, MissingFromBackup, -1, f.Size})
		}
	}
	res.Compared = len(both)
	if !o.Quick {
		var (
			mu       sync.Mutex
			firstErr error
			wg       sync.WaitGroup
		)
		work := make(chan pair)
		for range o.Parallel {
			wg.Go(func() {
				for p := range work {
					same, err := sameBytes(ctx, o, p.key, p.charmID, p.path)
					mu.Lock()
					switch {
					case err != nil && firstErr == nil:
						firstErr = err
					case err == nil && !same:
						res.Differences = append(res.Differences, Difference{p.key, DifferentBytes, p.bsize, p.csz})
					case err == nil:
						res.Bytes += p.bsize
					}
					mu.Unlock()
				}
			})
		}
		for _, p := range both {
			select {
			case work <- p:
			case <-ctx.Done():
			}
		}
		close(work)
		wg.Wait()
		if firstErr != nil {
			return res, firstErr
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	sort.Slice(res.Differences, func(i, j int) bool { return res.Differences[i].Key < res.Differences[j].Key })
	return res, nil
}

func sameBytes(ctx context.Context, o VerifyOptions, key, charmID, p string) (bool, error) {
	hb, err := hashBackup(ctx, o.Target, key)
	if err != nil {
		return false, err
	}
	rc, err := o.Cluster.Open(ctx, charmID, p)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return false, fmt.Errorf("read %s from the cluster: %w", key, err)
	}
	return bytes.Equal(hb, h.Sum(nil)), nil
}

func hashBackup(ctx context.Context, t backup.Target, key string) ([]byte, error) {
	rc, _, err := t.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return nil, fmt.Errorf("read %s from the backup: %w", key, err)
	}
	return h.Sum(nil), nil
}

// Summary is one line about a result.
func (r VerifyResult) Summary() string {
	users := "1 user"
	if len(r.Users) != 1 {
		users = fmt.Sprintf("%d users", len(r.Users))
	}
	var kinds []string
	count := map[string]int{}
	for _, d := range r.Differences {
		count[d.Kind]++
	}
	for _, k := range []string{MissingFromBackup, MissingFromCluster, DifferentBytes} {
		if count[k] > 0 {
			kinds = append(kinds, fmt.Sprintf("%d %s", count[k], k))
		}
	}
	if len(kinds) == 0 {
		files := "1 file"
		if r.Compared != 1 {
			files = fmt.Sprintf("%d files", r.Compared)
		}
		return fmt.Sprintf("%s, %s identical in backup and cluster", users, files)
	}
	diffs := "1 difference"
	if len(r.Differences) != 1 {
		diffs = fmt.Sprintf("%d differences", len(r.Differences))
	}
	return fmt.Sprintf("%s, %s: %s", users, diffs, strings.Join(kinds, ", "))
}
