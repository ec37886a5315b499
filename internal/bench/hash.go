package bench

import (
	"context"
	"crypto/sha256"
	"hash"
	"time"

	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

// HashRate is one checksum's speed on this machine, one core.
type HashRate struct {
	Name     string  `json:"name"`
	MBPerSec float64 `json:"mb_per_sec"`
	// VsUpload is its speed over the proxy's large uploads' MB/s, when
	// measured in the same run: above ~3, hashing every byte of an
	// upload as it streams costs it little.
	VsUpload float64 `json:"vs_upload,omitempty"`
	Chosen   bool    `json:"chosen,omitempty"`
}

// relateHashes compares the hashes with the large uploads of the run.
func (r *Report) relateHashes() {
	for _, w := range r.Workloads {
		if w.Name != WorkloadUploadLarge {
			continue
		}
		for _, run := range w.Runs {
			if run.Mode == ModeProxy && run.MBPerSec > 0 {
				for i := range r.Hashes {
					r.Hashes[i].VsUpload = r.Hashes[i].MBPerSec / run.MBPerSec
				}
			}
		}
	}
}

// measureHashes times SHA-256 (what cring records: every Go toolchain has
// it, hardware-accelerated where the CPU allows, and it is what charm users
// can check with sha256sum), BLAKE3 and xxh3 (not cryptographic) over the
// same 4 MiB buffer for d each.
func measureHashes(ctx context.Context, d time.Duration) []HashRate {
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	algos := []struct {
		name string
		h    func() hash.Hash
	}{
		{"sha256", sha256.New},
		{"blake3", func() hash.Hash { return blake3.New() }},
		{"xxh3", func() hash.Hash { return xxh3.New() }},
	}
	var out []HashRate
	for _, a := range algos {
		h := a.h()
		n := 0
		start := time.Now()
		for time.Since(start) < d && ctx.Err() == nil {
			h.Write(buf)
			n += len(buf)
		}
		out = append(out, HashRate{Name: a.name, MBPerSec: float64(n) / 1e6 / time.Since(start).Seconds(), Chosen: a.name == "sha256"})
	}
	return out
}
