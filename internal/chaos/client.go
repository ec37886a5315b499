package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path"
	"sync"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/charmapi"
)

// keySpace is the files the clients work on: dir<k>/sub/f<j>, so that a
// directory delete takes several keys at once.
type keySpace struct {
	dirs, perDir int
}

func (ks keySpace) keys() []string {
	var out []string
	for d := range ks.dirs {
		for j := range ks.perDir {
			out = append(out, ks.key(d, j))
		}
	}
	return out
}

func (ks keySpace) key(d, j int) string { return fmt.Sprintf("dir%d/sub/f%d", d, j) }

// listDirs are the directories whose listings hold the keys.
func (ks keySpace) listDirs() []string {
	out := make([]string, ks.dirs)
	for d := range ks.dirs {
		out[d] = fmt.Sprintf("dir%d/sub", d)
	}
	return out
}

// api talks charm's HTTP file API as the run's user.
type api struct {
	jwt    string
	client *http.Client
}

func newAPI(jwt string) *api {
	return &api{jwt: jwt, client: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}}}
}

func (a *api) close() { a.client.CloseIdleConnections() }

// do sends one request to base (http://host:port) for the fs path and
// returns the status and body.
func (a *api) do(ctx context.Context, method, base, p string, body []byte) (int, http.Header, []byte, error) {
	var rd io.Reader
	ctype := ""
	bu, err := charmapi.ParseBase(base)
	if err != nil {
		return 0, nil, nil, err
	}
	var q url.Values
	if method == http.MethodPost {
		form := charmapi.NewForm(path.Base(p))
		rd, ctype = bytes.NewReader(form.Bytes(body)), form.ContentType()
		q = url.Values{"mode": {"420"}}
	}
	req, err := http.NewRequestWithContext(ctx, method, charmapi.FSURL(bu, p, q).String(), rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "bearer "+a.jwt)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, resp.Header, nil, fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, resp.Header, b, nil
}

// listing decodes a directory answer into its entries' names, as paths
// (directories end in "/"). A name no path addresses is kept as listed:
// no client wrote it, and the checker is to see it.
func listing(b []byte) ([]string, error) {
	fi, unnamed, err := charmapi.DecodeListing(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, f := range fi.Files {
		if f.IsDir {
			names = append(names, f.Name+"/")
		} else {
			names = append(names, f.Name)
		}
	}
	return append(names, unnamed...), nil
}

// target is where clients send requests: a proxy, or the balancer.
type target struct {
	name string // "proxy1", "balancer"
	url  string // http://host:port
}

// workload is the clients: a dispatcher that draws ops from the seeded
// generator at a steady rate and workers that run them against the
// targets in turn.
type workload struct {
	o       Options
	ks      keySpace
	api     *api
	targets []target
	hist    *history
	skipped int // ticks with every worker busy
}

// run sends ops until ctx ends, then waits for the ops in flight.
func (w *workload) run(ctx context.Context) {
	rng := rand.New(rand.NewPCG(w.o.Seed, 0x636c69656e74)) // "client"
	jobs := make(chan *Op)
	var wg sync.WaitGroup
	for range w.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for op := range jobs {
				w.exec(op)
			}
		}()
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / w.o.Rate))
	defer t.Stop()
	id := 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
		op := w.next(rng, id)
		select {
		case jobs <- op:
			id++
		default:
			w.skipped++
		}
	}
	close(jobs)
	wg.Wait()
}

// next draws an operation: writes and overwrites 40% (one in eight of
// 64–256 KiB, which the proxy streams instead of reading whole first), file
// deletes 10%, directory deletes 3%, reads 32%, listings 15%.
func (w *workload) next(rng *rand.Rand, id int) *Op {
	d, j := rng.IntN(w.ks.dirs), rng.IntN(w.ks.perDir)
	op := &Op{ID: id, Proxy: id % len(w.targets), Path: w.ks.key(d, j)}
	if t := w.targets[op.Proxy]; t.name == "balancer" {
		op.Via = t.name
	}
	switch n := rng.IntN(100); {
	case n < 40:
		op.Kind = OpWrite
		pad := rng.IntN(2048)
		if rng.IntN(8) == 0 {
			pad = 64<<10 + rng.IntN(192<<10)
		}
		op.Data = content(w.o.Seed, id, op.Path, pad)
	case n < 50:
		op.Kind = OpDelete
	case n < 53:
		op.Kind = OpDeleteDir
		op.Path = fmt.Sprintf("dir%d", d)
	case n < 85:
		op.Kind = OpRead
	default:
		op.Kind = OpList
		op.Path = fmt.Sprintf("dir%d/sub", d)
	}
	return op
}

// exec runs op against its proxy and records it.
func (w *workload) exec(op *Op) {
	ctx, cancel := context.WithTimeout(context.Background(), w.o.HangAfter)
	defer cancel()
	base := w.targets[op.Proxy].url
	method := map[OpKind]string{OpWrite: http.MethodPost, OpDelete: http.MethodDelete, OpDeleteDir: http.MethodDelete,
		OpRead: http.MethodGet, OpList: http.MethodGet}[op.Kind]
	op.Start = time.Now()
	status, hdr, body, err := w.api.do(ctx, method, base, op.Path, op.Data)
	op.End = time.Now()
	op.Status = status
	classify(op, status, hdr, body, err)
	w.hist.add(op)
}

// classify sets op's outcome from the answer: 2xx acknowledged; a 4xx or a
// refused connection definitely not applied; anything else unknown.
func classify(op *Op, status int, hdr http.Header, body []byte, err error) {
	switch {
	case err != nil && status == 0:
		op.Err = err.Error()
		op.Outcome = Unknown
		if errors.Is(err, syscall.ECONNREFUSED) {
			op.Outcome = Failed // nothing was sent
		}
	case err != nil:
		op.Err = err.Error()
		op.Outcome = Unknown
	case status == http.StatusNotFound && (op.Kind == OpRead || op.Kind == OpList):
		op.Outcome = OK // absent, definitely
	case status >= 200 && status < 300:
		op.Outcome = OK
		op.Found = op.Kind == OpRead || op.Kind == OpList
		if op.Kind == OpRead {
			op.Data = body
		}
		if op.Kind == OpList {
			names, lerr := listing(body)
			if lerr != nil {
				op.Outcome, op.Err = Unknown, lerr.Error()
			}
			op.Names = names
		}
	case status >= 400 && status < 500:
		op.Outcome = Failed
		op.Err = errMessage(body)
	default:
		op.Outcome = Unknown
		op.Err = errMessage(body)
	}
	if op.Kind == OpRead && op.Found && hdr.Get("Content-Type") == "application/json" {
		// A directory where a file was expected: never written as such.
		op.Err = "a directory"
	}
}

// errMessage is charm's {"message": …}, or the raw body.
func errMessage(b []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		return m.Message
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}
