package devcluster

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestPortBlocksPerProcess: two processes draw from blocks no other holds,
// and one process keeps drawing from its own.
func TestPortBlocksPerProcess(t *testing.T) {
	if os.Getenv("CRING_PORT_BLOCK_CHILD") != "" {
		base, _ := portBlock()
		os.Stdout.WriteString(strconv.Itoa(base) + "\n")
		return
	}
	base, size := portBlock()
	if size != blockSize {
		t.Fatalf("block of %d ports, want %d", size, blockSize)
	}
	if again, _ := portBlock(); again != base {
		t.Fatalf("the process's block moved from %d to %d", base, again)
	}
	ports, err := FreePorts("127.0.0.1", 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p < base || p >= base+size {
			t.Fatalf("port %d outside the process's block %d-%d", p, base, base+size-1)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPortBlocksPerProcess$")
	cmd.Env = append(os.Environ(), "CRING_PORT_BLOCK_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(strings.Split(string(out), "\n")[0]))
	if err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	if child == base {
		t.Fatalf("another process drew from this process's block %d", base)
	}
}

// TestPortsInTurn: a port handed out is not handed out again before the
// rest of the block has been, even though nothing listens on it (a server
// may not have bound it yet, or a stopped node is about to restart on it).
func TestPortsInTurn(t *testing.T) {
	_, size := portBlock()
	seen := map[int]bool{}
	for range size / 4 {
		ports, err := FreePorts("127.0.0.1", 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice within %d ports", p, len(seen))
			}
			seen[p] = true
		}
	}
}
