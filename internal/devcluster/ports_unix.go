//go:build unix

package devcluster

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// portBlock is the first port and the size of the block of ports this
// process draws from: the first block, counting from one picked by its pid,
// that no other live process holds. A block is held with an exclusive flock
// on a file under /tmp, on a descriptor left open on purpose until
// the process exits (the kernel then releases it), and the file names its
// holder's pid so later calls find the block again without keeping state.
// Anything failing falls back to the whole range, as before blocks.
func portBlock() (base, size int) {
	dir := portDir()
	if dir == "" {
		return portBase, portSpan
	}
	pid := strconv.Itoa(os.Getpid())
	for k := range blocks {
		b := (os.Getpid() + k) % blocks
		name := filepath.Join(dir, strconv.Itoa(b))
		fd, err := syscall.Open(name, syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o666)
		if err != nil {
			continue
		}
		if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			syscall.Close(fd)
			if holder, err := os.ReadFile(name); err == nil && strings.TrimSpace(string(holder)) == pid {
				return portBase + b*blockSize, blockSize // ours, held by an earlier call's descriptor
			}
			continue
		}
		// Ours now (new, or left by a process that has exited): the
		// descriptor stays open so the lock lasts as long as the process.
		_ = syscall.Ftruncate(fd, 0)
		_, _ = syscall.Pwrite(fd, []byte(pid), 0)
		return portBase + b*blockSize, blockSize
	}
	return portBase, portSpan
}

// portDir is where the blocks' files live: one place for every process of
// the machine, whatever TMPDIR it runs with (a bench points its nodes'
// TMPDIR elsewhere, and the blocks must be the same ones).
func portDir() string {
	dir := "/tmp/cring-ports"
	if os.MkdirAll(dir, 0o777) != nil {
		return ""
	}
	return dir
}

// portCursor reserves the next n offsets of the block at base, in turn, so
// a process hands a port out again only after every other one of its block
// (a port just handed out may not be listened on yet, and a stopped node's
// port is not taken while it restarts). The cursor is a file next to the
// block's, read and advanced under its own flock (a lock on a new
// descriptor: it also excludes this process's other goroutines).
func portCursor(base, size, n int) int {
	dir := portDir()
	if dir == "" || size == portSpan {
		return rand.IntN(size)
	}
	fd, err := syscall.Open(filepath.Join(dir, strconv.Itoa(base)+".next"), syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o666)
	if err != nil {
		return rand.IntN(size)
	}
	defer syscall.Close(fd)
	if syscall.Flock(fd, syscall.LOCK_EX) != nil {
		return rand.IntN(size)
	}
	var b [8]byte
	start := 0
	if k, _ := syscall.Pread(fd, b[:], 0); k == len(b) {
		start = int(binary.LittleEndian.Uint64(b[:]) % uint64(size))
	}
	binary.LittleEndian.PutUint64(b[:], uint64((start+n)%size))
	_, _ = syscall.Pwrite(fd, b[:], 0)
	return start
}
