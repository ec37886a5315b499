package filestore

import "sync"

// lockTable hands out one RWMutex per name, kept only while someone holds
// or waits for it, so memory follows the keys in use, not every key seen.
type lockTable struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	sync.RWMutex
	refs int
}

func (t *lockTable) acquire(name string) *lockEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*lockEntry{}
	}
	e := t.m[name]
	if e == nil {
		e = &lockEntry{}
		t.m[name] = e
	}
	e.refs++
	return e
}

func (t *lockTable) release(name string, e *lockEntry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(t.m, name)
	}
}

// lock takes name exclusively; the returned func unlocks it.
func (t *lockTable) lock(name string) func() {
	e := t.acquire(name)
	e.Lock()
	return func() { e.Unlock(); t.release(name, e) }
}

// rlock takes name shared; the returned func unlocks it.
func (t *lockTable) rlock(name string) func() {
	e := t.acquire(name)
	e.RLock()
	return func() { e.RUnlock(); t.release(name, e) }
}
