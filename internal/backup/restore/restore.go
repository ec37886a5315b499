package restore

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/backup"
)

// Scope says what to restore or verify: one user, a path prefix, or all.
type Scope struct {
	// User is a charm ID; empty means every user.
	User string
	// Prefix narrows to a path: relative to User's root when User is set,
	// else a key "<charmID>/<path>". It matches that file or directory and
	// everything under it.
	Prefix string
}

// keyPrefix is the prefix to list and the path it must match on.
func (s Scope) keyPrefix() string {
	p := strings.Trim(s.Prefix, "/")
	switch {
	case s.User != "" && p != "":
		return s.User + "/" + p
	case s.User != "":
		return s.User + "/"
	default:
		return p
	}
}

func (s Scope) match(key string) bool {
	p := s.keyPrefix()
	if p == "" || strings.HasSuffix(p, "/") {
		return strings.HasPrefix(key, p)
	}
	return key == p || strings.HasPrefix(key, p+"/")
}

func (s Scope) String() string {
	switch p := s.keyPrefix(); {
	case p == "":
		return "everything"
	case s.User != "" && s.Prefix == "":
		return "user " + s.User
	default:
		return "path " + p
	}
}

// Plan lists the objects a restore of scope would put back: the current
// backup, or what it held at asOf (a versioned bucket) when asOf is set.
func Plan(ctx context.Context, t backup.Target, scope Scope, asOf time.Time) ([]backup.Object, error) {
	var objs []backup.Object
	var err error
	if asOf.IsZero() {
		objs, err = t.List(ctx, scope.keyPrefix(), true)
	} else {
		objs, err = t.ListAsOf(ctx, scope.keyPrefix(), asOf)
	}
	if err != nil {
		return nil, err
	}
	out := objs[:0]
	for _, o := range objs {
		if !o.IsDir && scope.match(o.Key) && strings.Contains(o.Key, "/") {
			out = append(out, o)
		}
	}
	return out, nil
}

// Progress is reported after every object.
type Progress struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
	Key               string // the object just finished
	Err               error  // its failure, if any
}

// Failure is one object that could not be restored.
type Failure struct {
	Key string
	Err error
}

// Result sums up a restore.
type Result struct {
	Files  int   // restored
	Bytes  int64 // restored
	Failed []Failure
}

// Options for Restore.
type Options struct {
	Target   backup.Target
	Cluster  *Cluster
	Objects  []backup.Object // from Plan
	Parallel int             // default 4
	// Progress, if set, is called after each object, one call at a time.
	Progress func(Progress)
}

// DefaultMode is used for objects stored without a mode: Charm would make
// directories nobody can enter for mode 0.
const DefaultMode fs.FileMode = 0o644

// attempts per object; a refusal (4xx) is not retried.
const attempts = 3

// Restore writes every planned object back through the cluster's API. It
// carries on past failures and reports them in the result. Running it again
// writes the same bytes again.
func Restore(ctx context.Context, o Options) (Result, error) {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	var total int64
	for _, ob := range o.Objects {
		total += ob.Size
	}
	var (
		mu  sync.Mutex
		res Result
		p   = Progress{TotalFiles: len(o.Objects), TotalBytes: total}
		wg  sync.WaitGroup
	)
	work := make(chan backup.Object)
	for range o.Parallel {
		wg.Go(func() {
			for ob := range work {
				err := restoreOne(ctx, o, ob)
				mu.Lock()
				p.Files++
				p.Bytes += ob.Size
				p.Key, p.Err = ob.Key, err
				if err != nil {
					res.Failed = append(res.Failed, Failure{ob.Key, err})
				} else {
					res.Files++
					res.Bytes += ob.Size
				}
				if o.Progress != nil {
					o.Progress(p)
				}
				mu.Unlock()
			}
		})
	}
	for _, ob := range o.Objects {
		select {
		case work <- ob:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	return res, ctx.Err()
}

func restoreOne(ctx context.Context, o Options, ob backup.Object) error {
	charmID, p, _ := strings.Cut(ob.Key, "/")
	var err error
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(i) * time.Second):
			}
		}
		err = copyOne(ctx, o, ob, charmID, p)
		var he *HTTPError
		if err == nil || ctx.Err() != nil || errors.As(err, &he) && !he.Temporary() {
			return err
		}
	}
	return err
}

func copyOne(ctx context.Context, o Options, ob backup.Object, charmID, p string) error {
	var rc io.ReadCloser
	var cur backup.Object
	var err error
	if ob.VersionID != "" {
		rc, cur, err = o.Target.GetVersion(ctx, ob.Key, ob.VersionID)
	} else {
		rc, cur, err = o.Target.Get(ctx, ob.Key)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	mode := cur.Mode
	if mode == 0 {
		mode = DefaultMode
	}
	return o.Cluster.Put(ctx, charmID, p, rc, cur.Size, mode)
}
