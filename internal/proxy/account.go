package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"

	charm "github.com/charmbracelet/charm/proto"
)

// sendAll sends the same small request to nodes concurrently.
func (p *Proxy) sendAll(ctx context.Context, nodes []int, r *http.Request, method string, body []byte) []outcome {
	out := make([]outcome, len(nodes))
	var wg sync.WaitGroup
	for k, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[k] = p.send(ctx, i, r, method, body)
		}()
	}
	wg.Wait()
	return out
}

// broadcast sends an account update (encrypt key, user name) to every healthy
// node: stock nodes each keep their own accounts, and any of them may serve
// this user's next SSH login. Acked at W nodes like a file write.
func (p *Proxy) broadcast(w http.ResponseWriter, r *http.Request) {
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	nodes := p.healthyNodes()
	outs := p.sendAll(r.Context(), nodes, r, r.Method, body)
	var first *outcome
	var failed []outcome
	for k := range outs {
		if outs[k].ok() {
			if first == nil {
				first = &outs[k]
			}
			continue
		}
		failed = append(failed, outs[k])
	}
	stored := len(outs) - len(failed)
	for _, o := range failed {
		p.log.Warn("account update failed on node", "node", p.m.Nodes[o.node].Name, "path", r.URL.Path, "outcome", o.String())
	}
	if stored >= p.m.W {
		relay(w, *first)
		return
	}
	if o, same := sameClientError(failed); stored == 0 && same {
		relay(w, o)
		return
	}
	p.obs.QuorumFailure("account")
	if knowsNoUser(failed) {
		writeError(w, http.StatusServiceUnavailable, accountsDifferMessage(stored, len(p.m.Nodes)))
		return
	}
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
		"saving your account's keys reached %d of %d nodes, %d required", stored, len(p.m.Nodes), p.m.W))
}

// knowsNoUser reports whether some node answered 404: it doesn't know the
// user, so the nodes' per-node account stores differ.
func knowsNoUser(os []outcome) bool {
	return slices.ContainsFunc(os, func(o outcome) bool { return o.err == nil && o.status == http.StatusNotFound })
}

// accountsDifferMessage tells a user, and the operator they will ask, why
// an account call failed on stock nodes whose account stores differ.
func accountsDifferMessage(known, nodes int) string {
	return fmt.Sprintf("your account exists on %d of %d nodes: the nodes' account stores differ; "+
		"the server's administrator must sync them (cring accounts sync) or run every node on one account store (cring node --accounts postgres://…)", known, nodes)
}

// seqQuorums are how many nodes must answer a seq increment and a seq read so
// that every read and every increment overlaps the last increment's nodes:
// inc > M/2 makes increments overlap each other, inc+read > M makes reads
// see them. Together with bringing laggards up to the max, /v1/seq never goes
// backwards whichever nodes are up (docs/design.md, invariant 7).
func (p *Proxy) seqQuorums() (inc, read int) {
	m := len(p.m.Nodes)
	inc = max(p.m.W, m/2+1)
	return inc, m - inc + 1
}

// maxCatchUp bounds how many increments bring one lagging node up to date in
// a single request; a node further behind catches up over several requests.
const maxCatchUp = 10000

// maxSeqRounds bounds the rounds of one increment that other proxies'
// increments of the same sequence keep interleaving with.
const maxSeqRounds = 8

// seq serves GET and POST /v1/seq/:name. Each node keeps its own counter and
// hands out each of its values once. An increment answers only a value a
// majority of all the nodes handed to it: two increments, through any
// number of proxies, never share a value (their majorities share a node),
// and a later increment gets a larger one (its majority shares a node whose
// counter is past this one's). Laggards are brought up to the round's max,
// which gives the max its majority unless another proxy's increment
// interleaved; then the round is repeated. A read answers the max over
// nodes that overlap every increment's majority. Within this proxy,
// requests for one sequence take turns.
func (p *Proxy) seq(w http.ResponseWriter, r *http.Request, user, name string) {
	unlock := p.seqLocks.lock(user + "/" + name)
	defer unlock()
	inc, read := p.seqQuorums()
	need := read
	if r.Method == http.MethodPost {
		need = inc
	}
	majority := len(p.m.Nodes)/2 + 1
	for round := range maxSeqRounds {
		top, handed, answered, failed := p.seqRound(r.Context(), r)
		if answered < need {
			if o, same := sameClientError(failed); answered == 0 && same {
				p.obs.QuorumFailure("seq")
				relay(w, o)
				return
			}
			if knowsNoUser(failed) {
				p.obs.QuorumFailure("seq")
				writeError(w, http.StatusServiceUnavailable, accountsDifferMessage(answered, len(p.m.Nodes)))
				return
			}
			if round < maxSeqRounds-1 && r.Context().Err() == nil {
				// A node that failed this round (slow, or a request lost) may
				// answer the next; one that is down was marked so and is not
				// asked again. Numbers the round took are skipped, never
				// handed out twice.
				continue
			}
			p.obs.QuorumFailure("seq")
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
				"sequence needs %d of %d nodes to be sure it never goes backwards, %d answered", need, len(p.m.Nodes), answered))
			return
		}
		if r.Method != http.MethodPost || handed >= majority {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(&charm.SeqMsg{Seq: top})
			return
		}
	}
	p.obs.QuorumFailure("seq")
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
		"sequence %q is being incremented through other proxies at the same moment; no value reached a majority in %d rounds, try again", name, maxSeqRounds))
}

// seqRound sends the request to every healthy node and brings each node
// that answered below the max up to it. It returns the max, how many nodes
// handed out exactly that value to this request (an increment's answer or
// a catch-up's), how many answered and ended at the max, and the failures.
func (p *Proxy) seqRound(ctx context.Context, r *http.Request) (top uint64, handed, answered int, failed []outcome) {
	vals := map[int]uint64{}
	for _, o := range p.sendAll(ctx, p.healthyNodes(), r, r.Method, nil) {
		v, err := seqValue(o)
		if err != nil {
			p.log.Warn("seq failed on node", "node", p.m.Nodes[o.node].Name, "err", err)
			failed = append(failed, o)
			continue
		}
		vals[o.node] = v
		top = max(top, v)
	}
	for i, v := range vals {
		gave := r.Method == http.MethodPost && v == top
		for n := 0; v < top && n < maxCatchUp; n++ {
			nv, err := seqValue(p.send(ctx, i, r, http.MethodPost, nil))
			if err != nil {
				p.log.Warn("seq catch-up failed", "node", p.m.Nodes[i].Name, "err", err)
				break
			}
			v = nv
			gave = gave || v == top
		}
		if v < top {
			continue
		}
		answered++
		if gave {
			handed++
		}
	}
	return top, handed, answered, failed
}

func seqValue(o outcome) (uint64, error) {
	if !o.ok() {
		return 0, fmt.Errorf("seq: %s", o.String())
	}
	var m charm.SeqMsg
	if err := json.Unmarshal(o.body, &m); err != nil {
		return 0, fmt.Errorf("seq: decode %q: %w", o.body, err)
	}
	return m.Seq, nil
}
