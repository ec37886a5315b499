package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/tombstone"
)

// Directory listings are merged as they stream (docs/performance.md,
// "Listings"). Neither stock charm nor cring node sorts a listing (both
// list in directory order, which differs from node to node), so a k-way
// merge of the nodes' streams would first need each node's listing sorted,
// held whole. Instead every node's listing is decoded entry by entry into
// one table keyed by name: one compact entry per distinct name however many
// nodes listed it, sorted once at the end and encoded out entry by entry.
// Its memory is about half the JSON the proxy answers.

const (
	// maxListing caps one node's listing: about ten million entries.
	maxListing = 1 << 30
	// maxNameLen caps one listed name; file systems allow 255 bytes, and
	// escaping triples that at most.
	maxNameLen = 4 << 10
	// arenaChunk and entryChunk size the table's blocks: it grows a block
	// at a time, never by copying what it holds.
	arenaChunk = 64 << 10
	entryChunk = 1 << 10
)

// mergedEntry is one name's newest entry among the listings (32 bytes; its
// name is in the table's arena).
type mergedEntry struct {
	nanos int64 // modification time, Unix nanoseconds (entryFar: in dirMerge.far)
	size  int64
	off   uint32
	mode  uint32
	nlen  uint16
	n     uint16 // listings that had the name
	zone  int16  // the time's UTC offset in minutes, as the node wrote it
	flags uint8
}

const (
	entryDir = 1 << iota
	entryFar // a time Unix nanoseconds can't hold, or an offset of seconds
)

// dirMerge is the union of several nodes' listings of one directory: by
// name, the newest modification time wins; the directory's own fields are
// the first listing's, its time the newest.
type dirMerge struct {
	mu     sync.Mutex
	hdr    charm.FileInfo
	lists  int  // listings merged whole
	broken bool // a listing broke off after adding entries: counts are off

	arena  [][]byte        // names, back to back
	chunks [][]mergedEntry // entries, entryChunk to a block
	far    map[uint32]time.Time
	count  int
	slots  []uint32 // open addressing: entry index + 1, 0 empty
	seed   maphash.Seed
	order  []uint32 // entry indices by name, once sorted
}

func newDirMerge() *dirMerge { return &dirMerge{seed: maphash.MakeSeed()} }

func (m *dirMerge) entry(i uint32) *mergedEntry { return &m.chunks[i/entryChunk][i%entryChunk] }

func (m *dirMerge) name(e *mergedEntry) []byte {
	c := m.arena[e.off/arenaChunk]
	o := e.off % arenaChunk
	return c[o : o+uint32(e.nlen)]
}

// add merges one node's listing as it streams from rd. On error the listing
// counts as not given; entries it added before it broke off stay (a real
// node listed them), but the merge no longer claims every file is on every
// node that answered, so deletes are then always checked.
func (m *dirMerge) add(rd io.Reader) error {
	added := false
	hdr, err := decodeListing(rd, func(batch []wireEntry) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		added = true
		for k := range batch {
			if err := m.insert(&batch[k]); err != nil {
				return err
			}
		}
		return nil
	})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.broken = m.broken || added
		return err
	}
	if m.lists == 0 {
		m.hdr = hdr
	} else if hdr.ModTime.After(m.hdr.ModTime) {
		m.hdr.ModTime = hdr.ModTime
	}
	m.lists++
	return nil
}

// insert adds one listed entry (m.mu held).
func (m *dirMerge) insert(f *wireEntry) error {
	name := f.Name.b
	if len(name) > maxNameLen {
		return fmt.Errorf("listed name of %d bytes", len(name))
	}
	if 4*(m.count+1) > 3*len(m.slots) {
		m.grow()
	}
	mask := uint32(len(m.slots) - 1)
	for s := uint32(maphash.Bytes(m.seed, name)) & mask; ; s = (s + 1) & mask {
		idx := m.slots[s]
		if idx == 0 {
			if m.count >= 1<<32-2 {
				return errors.New("listing too large")
			}
			e := m.newEntry(name)
			e.n = 1
			m.set(uint32(m.count-1), e, f)
			m.slots[s] = uint32(m.count)
			return nil
		}
		e := m.entry(idx - 1)
		if !bytes.Equal(m.name(e), name) {
			continue
		}
		if e.n < 1<<16-1 {
			e.n++
		}
		if f.ModTime.After(m.modTime(idx-1, e)) {
			m.set(idx-1, e, f)
		}
		return nil
	}
}

// set makes entry i (e) f's version.
func (m *dirMerge) set(i uint32, e *mergedEntry, f *wireEntry) {
	e.size, e.mode, e.flags = f.Size, uint32(f.Mode), 0
	if f.IsDir {
		e.flags |= entryDir
	}
	_, zone := f.ModTime.Zone()
	e.nanos, e.zone = f.ModTime.UnixNano(), int16(zone/60)
	if !time.Unix(0, e.nanos).Equal(f.ModTime) || zone%60 != 0 || zone/60 != int(e.zone) {
		e.flags |= entryFar
		if m.far == nil {
			m.far = map[uint32]time.Time{}
		}
		m.far[i] = f.ModTime
		return
	}
	delete(m.far, i)
}

// modTime is entry i's (e's) modification time, in the zone its node wrote.
func (m *dirMerge) modTime(i uint32, e *mergedEntry) time.Time {
	if e.flags&entryFar != 0 {
		return m.far[i]
	}
	return time.Unix(0, e.nanos).In(zoneAt(int(e.zone) * 60))
}

// zones: the few UTC offsets listings use, one Location each.
var zones sync.Map // int → *time.Location

func zoneAt(offset int) *time.Location {
	if offset == 0 {
		return time.UTC
	}
	if l, ok := zones.Load(offset); ok {
		return l.(*time.Location)
	}
	l, _ := zones.LoadOrStore(offset, time.FixedZone("", offset))
	return l.(*time.Location)
}

// newEntry appends an entry named name and returns it; m.count is then its
// index + 1.
func (m *dirMerge) newEntry(name []byte) *mergedEntry {
	last := len(m.arena) - 1
	if last < 0 || len(m.arena[last])+len(name) > arenaChunk {
		m.arena = append(m.arena, make([]byte, 0, arenaChunk))
		last++
	}
	off := uint32(last)*arenaChunk + uint32(len(m.arena[last]))
	m.arena[last] = append(m.arena[last], name...)
	if m.count%entryChunk == 0 {
		m.chunks = append(m.chunks, make([]mergedEntry, entryChunk))
	}
	e := m.entry(uint32(m.count))
	e.off, e.nlen = off, uint16(len(name))
	m.count++
	return e
}

// grow doubles the slot table and places every entry again.
func (m *dirMerge) grow() {
	slots := make([]uint32, max(1024, 2*len(m.slots)))
	mask := uint32(len(slots) - 1)
	for i := range uint32(m.count) {
		s := uint32(maphash.Bytes(m.seed, m.name(m.entry(i)))) & mask
		for slots[s] != 0 {
			s = (s + 1) & mask
		}
		slots[s] = i + 1
	}
	m.slots = slots
}

// everywhere reports whether every file (not directory) was in every
// listing merged.
func (m *dirMerge) everywhere() bool {
	if m.broken {
		return false
	}
	for i := range uint32(m.count) {
		if e := m.entry(i); e.flags&entryDir == 0 && int(e.n) != m.lists {
			return false
		}
	}
	return true
}

// names yields every entry's name (an iter.Seq).
func (m *dirMerge) names(yield func(string) bool) {
	for i := range uint32(m.count) {
		if !yield(string(m.name(m.entry(i)))) {
			return
		}
	}
}

// sort orders the entries by name; the lookup table is no longer needed.
func (m *dirMerge) sort() {
	m.slots = nil
	m.order = make([]uint32, m.count)
	for i := range m.order {
		m.order[i] = uint32(i)
	}
	slices.SortFunc(m.order, func(a, b uint32) int { return bytes.Compare(m.name(m.entry(a)), m.name(m.entry(b))) })
}

// listed is an entry as the filter sees it (name only while it is called).
type listed struct {
	name    []byte
	isDir   bool
	modTime time.Time
}

// writeJSON writes the merged listing, sorted by name, as charm's JSON
// (byte for byte what encoding the whole charm.FileInfo would give),
// leaving out the entries keep refuses. Nothing is held but one entry.
func (m *dirMerge) writeJSON(w io.Writer, keep func(listed) bool) error {
	if m.order == nil {
		m.sort()
	}
	bw := bufio.NewWriterSize(w, 16<<10)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // escapes as the encoder of a whole listing does
	hdr := m.hdr
	hdr.Files = nil
	if err := enc.Encode(hdr); err != nil {
		return fmt.Errorf("encode listing: %w", err)
	}
	// {"name":…,"mode":…}\n: the files go before its closing brace.
	head := bytes.TrimSuffix(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), []byte("}"))
	if _, err := bw.Write(head); err != nil {
		return err
	}
	wrote := 0
	var line []byte
	for _, i := range m.order {
		e := m.entry(i)
		t := m.modTime(i, e)
		if keep != nil && !keep(listed{m.name(e), e.flags&entryDir != 0, t}) {
			continue
		}
		if wrote == 0 {
			line = append(line[:0], `,"files":[`...)
		} else {
			line = append(line[:0], ',')
		}
		var err error
		if line, err = appendEntry(line, m.name(e), e.flags&entryDir != 0, e.size, t, fs.FileMode(e.mode)); err != nil {
			return err
		}
		if _, err := bw.Write(line); err != nil {
			return err
		}
		wrote++
	}
	end := "}\n"
	if wrote > 0 {
		end = "]}\n"
	}
	if _, err := bw.WriteString(end); err != nil {
		return err
	}
	return bw.Flush()
}

// wireEntry is one listed entry as decoded: charm's FileInfo fields, with
// the name decoded into a buffer the entry keeps (no string per entry).
type wireEntry struct {
	Name    wireName    `json:"name"`
	IsDir   bool        `json:"is_dir"`
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"modtime"`
	Mode    fs.FileMode `json:"mode"`
}

// wireName is a JSON string decoded into reused bytes, as encoding/json
// would decode it into a string.
type wireName struct{ b []byte }

func (n *wireName) UnmarshalJSON(data []byte) error {
	if len(data) >= 2 && data[0] == '"' && bytes.IndexByte(data, '\\') < 0 && utf8.Valid(data) {
		n.b = append(n.b[:0], data[1:len(data)-1]...)
		return nil
	}
	// Escapes, invalid UTF-8 (replaced), null: as a string field would be.
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	n.b = append(n.b[:0], s...)
	return nil
}

// decodeListing reads one node's JSON listing (charm's FileInfo) from rd,
// handing its entries to add a few at a time as they are decoded (the
// slice and its names are reused: add keeps nothing of them), and returns
// the directory's own fields. Fields are matched as encoding/json matches
// them (case-insensitively); unknown ones are skipped.
func decodeListing(rd io.Reader, add func([]wireEntry) error) (charm.FileInfo, error) {
	var hdr charm.FileInfo
	fail := func(err error) (charm.FileInfo, error) {
		return charm.FileInfo{}, fmt.Errorf("decode listing: %w", err)
	}
	dec := json.NewDecoder(io.LimitReader(rd, maxListing))
	if err := expectDelim(dec, '{'); err != nil {
		return fail(err)
	}
	batch := make([]wireEntry, 64)
	n := 0
	flush := func() error {
		err := add(batch[:n])
		n = 0
		return err
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fail(err)
		}
		key, _ := t.(string)
		switch strings.ToLower(key) {
		case "files":
			t, err := dec.Token()
			if err != nil {
				return fail(err)
			}
			if t == nil {
				continue // null
			}
			if t != json.Delim('[') {
				return fail(fmt.Errorf("files: want an array, got %v", t))
			}
			for dec.More() {
				e := &batch[n]
				name := e.Name.b[:0]
				*e = wireEntry{Name: wireName{name}} // a field absent from the JSON is zero, as in a new FileInfo
				if err := dec.Decode(e); err != nil {
					return fail(err)
				}
				if n++; n == len(batch) {
					if err := flush(); err != nil {
						return fail(err)
					}
				}
			}
			if err := expectDelim(dec, ']'); err != nil {
				return fail(err)
			}
			if n > 0 {
				if err := flush(); err != nil {
					return fail(err)
				}
			}
		case "name":
			err = dec.Decode(&hdr.Name)
		case "is_dir":
			err = dec.Decode(&hdr.IsDir)
		case "size":
			err = dec.Decode(&hdr.Size)
		case "modtime":
			err = dec.Decode(&hdr.ModTime)
		case "mode":
			err = dec.Decode(&hdr.Mode)
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return fail(err)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return fail(err)
	}
	return hdr, nil
}

// appendEntry appends one listing entry as encoding/json encodes a
// charm.FileInfo without files (names HTML-escaped, as json.Encoder does),
// without the allocations of encoding it through reflection.
func appendEntry(b, name []byte, isDir bool, size int64, t time.Time, mode fs.FileMode) ([]byte, error) {
	b = append(b, `{"name":`...)
	b = appendJSONString(b, name)
	b = append(b, `,"is_dir":`...)
	b = strconv.AppendBool(b, isDir)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, size, 10)
	b = append(b, `,"modtime":`...)
	if _, off := t.Zone(); t.Year() < 0 || t.Year() > 9999 || off <= -24*3600 || off >= 24*3600 {
		// What RFC 3339 can't say: encoding/json fails, and so does this.
		mt, err := t.MarshalJSON()
		if err != nil {
			return b, fmt.Errorf("encode listing: %w", err)
		}
		b = append(b, mt...)
	} else {
		b = append(b, '"')
		b = t.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	b = append(b, `,"mode":`...)
	b = strconv.AppendUint(b, uint64(mode), 10)
	return append(b, '}'), nil
}

// appendJSONString is encoding/json's string encoding with HTML escaping.
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != d {
		return fmt.Errorf("want %v, got %v", d, t)
	}
	return nil
}

// listingFilter is what a listing of dirPath leaves out, one entry at a
// time: entries a tombstone at least as new covers (tombs: name → the
// delete's time; a delete of the directory or one above it covers its
// files), and cring's own directory in the user's root. Entries are
// compared by modification time: listings don't carry stamps yet
// (docs/design.md, "What stock nodes can't do").
func listingFilter(dirPath string, tombs map[string]time.Time) func(listed) bool {
	var dirDeleted []time.Time
	for _, c := range tombstone.Covering(dirPath) {
		if t, ok := tombs[tombstone.Name(c)]; ok {
			dirDeleted = append(dirDeleted, t)
		}
	}
	dir := tombstone.Clean(dirPath)
	dirReserved := tombstone.Reserved(dir)
	return func(f listed) bool {
		for _, t := range dirDeleted {
			// The directory itself was deleted: only what was written
			// since survives.
			if !f.isDir && !f.modTime.After(t) {
				return false
			}
		}
		// A name a directory lists holds no slash and is no dot, so its
		// path is the directory's and the name; anything else is cleaned.
		var p string
		plain := len(f.name) > 0 && bytes.IndexByte(f.name, '/') < 0 && string(f.name) != "." && string(f.name) != ".."
		switch {
		case !plain:
			p = tombstone.Clean(dirPath + "/" + string(f.name))
			if tombstone.Reserved(p) {
				return false
			}
		case dirReserved || dir == "" && string(f.name) == tombstone.Root:
			return false
		}
		if len(tombs) == 0 || f.isDir {
			return true
		}
		if plain {
			p = path.Join(dir, string(f.name))
		}
		t, ok := tombs[tombstone.Name(p)]
		return !ok || f.modTime.After(t)
	}
}
